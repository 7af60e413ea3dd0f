"""The default work sizes of every pass that projects hidden states to the vocabulary (the belief scorer, the
reference, the policy's training pass): set here once; the config's defaults (`scorer.token_budget`,
`scorer.logits_chunk`, `train.logits_chunk`) read them. Imports nothing, so the config loads without torch."""

DEFAULT_TOKEN_BUDGET = 16384  # padded query tokens per forward pass, and rows × longest row per batch
DEFAULT_LOGITS_CHUNK = 1024  # hidden states projected to the vocabulary at a time: [chunk, V] logits at most

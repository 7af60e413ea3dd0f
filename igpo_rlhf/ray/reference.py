"""ReferenceActor: the frozen reference policy π_ref, giving log π_ref(tok_j | tok_<j) for the KL term.

A plain transformers model in eval mode under torch.no_grad (no DeepSpeed: it never trains, and one
bf16 copy of a 3B/7B model fits on one GPU). Rows are batched by length within `token_budget`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from igpo_rlhf.ray.deepspeed_actor import training_device
from igpo_rlhf.ray.policy import load_causal_lm
from igpo_rlhf.training.logprobs import length_batches, pad_right, token_log_probs

if TYPE_CHECKING:
    from igpo_rlhf.config import Config


class ReferenceActor:
    """Holds π_ref (`model.ref_path`, default the initial policy `model.path`)."""

    def __init__(self, cfg: Config) -> None:
        torch.manual_seed(cfg.train.seed)
        self.device = training_device()
        path = cfg.model.ref_path or cfg.model.path
        self.model = load_causal_lm(path, cfg.model, cfg.model.dtype).to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.temperature = cfg.rollout.temperature
        self.token_budget = cfg.scorer.token_budget

    @torch.no_grad()
    def log_probs(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        """log π_ref(tok_j | tok_<j) of every sequence, each [L_i] float32 on the CPU (position 0: 0)."""
        out: list[torch.Tensor | None] = [None] * len(sequences)
        for rows in length_batches([len(s) for s in sequences], self.token_budget):
            ids = pad_right([torch.tensor(sequences[i], dtype=torch.long) for i in rows], 0)  # [B, L]
            attn = pad_right([torch.ones(len(sequences[i]), dtype=torch.long) for i in rows], 0)  # [B, L]
            logits = self.model(
                input_ids=ids.to(self.device), attention_mask=attn.to(self.device), use_cache=False
            ).logits
            lp = token_log_probs(logits, ids.to(self.device), temperature=self.temperature).cpu()  # [B, L]
            for b, i in enumerate(rows):
                out[i] = lp[b, : len(sequences[i])].clone()
        return out  # type: ignore[return-value]

    def ready(self) -> bool:
        """True once constructed (the model is loaded)."""
        return True

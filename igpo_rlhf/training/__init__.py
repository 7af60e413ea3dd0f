"""What a training step computes between the Ray calls, as plain code (no Ray here).

- `experience`: outcomes, turn rewards r_{i,t} and advantages Â_{i,t} wired to `igpo_rlhf.algo`, and the
  `Experience` records the policy trains on;
- `batch`: experiences into per-rank mini-batches and micro-batches, and the exact loss weights;
- `logprobs`: token log-probs and entropies from logits, right padding;
- `metrics`: the per-step metrics and their sinks (console, metrics.jsonl, TensorBoard, W&B);
- `checkpoint`: atomic, rotated checkpoints and RNG states.
"""

"""Token log-probs log π(tok_j | tok_<j) from a causal LM's logits, and length-bucketed batching.

Shared by the policy (training pass), the reference (ref log-probs for the KL) and the critic (value
passes). Token-aligned like every tensor of the trainer: position j holds the quantity of token j, so
position 0 (no context) is 0, and batches are right-padded.
"""

from __future__ import annotations

import torch


def token_log_probs(
    logits: torch.Tensor, input_ids: torch.Tensor, *, temperature: float = 1.0
) -> torch.Tensor:
    """log π(tok_j | tok_<j) [B, L] (float32) from logits [B, L, V] of the same right-padded batch.

    `temperature`: the rollouts' sampling temperature (π = softmax(logits / T)), so the trained log-probs
    and the distribution the tokens were sampled from are the same π. Position 0 (no context) is 0.
    """
    scaled = _scaled_logits(logits, input_ids, temperature)  # [B, L-1, V]: the distributions of tokens 1..L-1
    picked = scaled.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # [B, L-1]
    log_probs = picked - torch.logsumexp(scaled, dim=-1)  # [B, L-1]
    return torch.cat([torch.zeros_like(log_probs[:, :1]), log_probs], dim=1)


def token_entropy(logits: torch.Tensor, input_ids: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """Entropy H(π(· | tok_<j)) [B, L] (float32) of the distribution token j was drawn from; position 0 is 0.

    Differentiable (for an entropy bonus); call it under torch.no_grad() when it is only a metric.
    """
    scaled = _scaled_logits(logits, input_ids, temperature)  # [B, L-1, V]
    log_z = torch.logsumexp(scaled, dim=-1)  # [B, L-1]
    entropy = log_z - (torch.softmax(scaled, dim=-1) * scaled).sum(-1)  # H = log Z - E_π[logit / T]
    return torch.cat([torch.zeros_like(entropy[:, :1]), entropy], dim=1)


def _scaled_logits(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    if logits.dim() != 3 or input_ids.shape != logits.shape[:2]:
        raise ValueError(
            f"logits {list(logits.shape)} and input_ids {list(input_ids.shape)}: expected [B, L, V] and [B, L]"
        )
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} must be > 0")
    scaled = logits[:, :-1].float()
    return scaled / temperature if temperature != 1.0 else scaled


def length_batches(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Indices grouped into batches of similar length whose padded size (rows x longest) stays within
    `token_budget` (a single longer row still gets a batch of its own). Longest first."""
    if token_budget < 1:
        raise ValueError(f"token_budget={token_budget!r} must be >= 1")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        # rows are sorted longest first, so the batch's longest row is its first
        if batches and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= token_budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def pad_right(rows: list[torch.Tensor], value: float | int = 0) -> torch.Tensor:
    """Stack 1-D tensors of different lengths into [B, L_max], right-padded with `value`."""
    width = max(int(r.numel()) for r in rows)
    out = torch.full((len(rows), width), value, dtype=rows[0].dtype)
    for b, r in enumerate(rows):
        out[b, : r.numel()] = r
    return out

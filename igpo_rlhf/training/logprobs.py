"""Token log-probs log π(tok_j | tok_<j) of a causal LM, and length-bucketed batching.

`action_log_probs` is what the policy's training pass uses: log-probs (and entropies) from the final hidden
states, projected to the vocabulary only at action positions and `logits_chunk` rows at a time, each chunk
under activation checkpointing, so neither the forward nor the backward ever holds more than one chunk's
[chunk, V] logits (a [B, L, V] float32 tensor is tens of GB at a 152k vocabulary and a paper-scale
micro-batch). `token_log_probs` / `token_entropy` are the plain versions over full logits [B, L, V] (the
tests' reference). Token-aligned like every tensor of the trainer: position j holds the quantity of token j,
so position 0 (no context) is 0, and batches are right-padded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from igpo_rlhf.scoring.budget import DEFAULT_LOGITS_CHUNK


@dataclass
class ActionLogProbs:
    """`action_log_probs`' result: [B, L] float32 each, 0 at position 0 and wherever the action mask is 0."""

    log_probs: torch.Tensor  # log π(tok_j | tok_<j) at temperature T
    entropy: torch.Tensor | None  # H(π(· | tok_<j)); None when not asked for


def action_log_probs(
    lm_head: nn.Module,
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    action_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    logits_chunk: int = DEFAULT_LOGITS_CHUNK,
    entropy: str = "none",
) -> ActionLogProbs:
    """log π(tok_j | tok_<j) at the action positions of a right-padded batch, from the decoder's final hidden
    states [B, L, H]: equal to `token_log_probs(lm_head(hidden), ...)` there, differentiable, without [B, L, V].

    Hidden state j-1 predicts token j; only rows where action_mask[:, j] is set are projected, `logits_chunk`
    at a time. With grad enabled each chunk runs under torch.utils.checkpoint (non-reentrant): its logits are
    recomputed in backward instead of kept. entropy: "none", "metric" (no gradient) or "grad" (an entropy
    bonus), computed on the same chunks.
    """
    if hidden.dim() != 3 or input_ids.shape != hidden.shape[:2] or action_mask.shape != input_ids.shape:
        raise ValueError(
            f"hidden {list(hidden.shape)}, input_ids {list(input_ids.shape)}, action_mask "
            f"{list(action_mask.shape)}: expected [B, L, H], [B, L], [B, L]"
        )
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} must be > 0")
    if isinstance(logits_chunk, bool) or not isinstance(logits_chunk, int) or logits_chunk < 1:
        raise ValueError(f"logits_chunk={logits_chunk!r} must be a positive integer")
    if entropy not in ("none", "metric", "grad"):
        raise ValueError(f"entropy={entropy!r}; accepted: none, metric, grad")
    rows, cols = action_mask[:, 1:].bool().nonzero(as_tuple=True)  # token cols + 1 of row `rows`
    states = hidden[rows, cols]  # [N, H] the hidden states that predict the action tokens
    targets = input_ids[rows, cols + 1]  # [N]

    def project(states: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = lm_head(states).float()  # [n, V]
        if temperature != 1.0:
            logits = logits / temperature
        log_z = logits.logsumexp(-1)  # [n]
        picked = logits.gather(-1, targets[:, None]).squeeze(-1) - log_z
        if entropy == "none":
            return picked, picked.new_zeros(0)
        with torch.set_grad_enabled(entropy == "grad" and torch.is_grad_enabled()):
            ent = log_z - (torch.softmax(logits, -1) * logits).sum(-1)  # H = log Z - E_π[logit / T]
        return picked, ent

    log_probs, entropies = [], []
    for start in range(0, len(states), logits_chunk):
        chunk = (states[start : start + logits_chunk], targets[start : start + logits_chunk])
        if torch.is_grad_enabled() and states.requires_grad:
            picked, ent = checkpoint(project, *chunk, use_reentrant=False)
        else:
            picked, ent = project(*chunk)
        log_probs.append(picked)
        entropies.append(ent)
    shape, device = input_ids.shape, hidden.device
    index = (rows, cols + 1)
    out = torch.zeros(shape, dtype=torch.float32, device=device)
    out = out.index_put(index, torch.cat(log_probs)) if log_probs else out
    ent_out = None
    if entropy != "none":
        ent_out = torch.zeros(shape, dtype=torch.float32, device=device)
        ent_out = ent_out.index_put(index, torch.cat(entropies)) if entropies else ent_out
    return ActionLogProbs(log_probs=out, entropy=ent_out)


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

"""What a training actor receives: one `Experience` per rollout, grouped into per-rank mini-batches.

OpenRLHF's vocabulary (an *experience* is a rollout with everything the update needs); ours carries
unpadded 1-D tensors, token-aligned (position j = token j), so each micro-batch is padded only to its
own longest row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from openrlhf.utils.seqlen_balancing import get_seqlen_balanced_partitions

from igpo_rlhf.training.logprobs import pad_right

AGG_UNITS = {"token_mean": "tokens", "seq_mean": "sequences"}


@dataclass(eq=False)  # tensors have no single truth value; compare fields explicitly
class Experience:
    """One rollout's training tensors, all [L] (L = its token count), unpadded."""

    input_ids: torch.Tensor  # [L] int64, exactly the sampled/appended token ids
    action_mask: torch.Tensor  # [L] bool, True on tokens the policy generated
    old_log_probs: torch.Tensor  # [L] float32, log π_θold(tok_j | tok_<j) (0 off the mask)
    advantages: torch.Tensor  # [L] float32, Â_{i,t} of the turn holding token j (0 off the mask)
    ref_log_probs: torch.Tensor | None = None  # [L] float32, log π_ref (None when kl_coef = 0)
    old_values: torch.Tensor | None = None  # [L] float32, critic values V(s_j) before the update (ppo)
    returns: torch.Tensor | None = None  # [L] float32, GAE targets R_j (ppo)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def num_actions(self) -> int:
        return int(self.action_mask.sum())


@dataclass
class MiniBatch:
    """One optimiser step's share for one rank, plus the size of the whole mini-batch over all ranks.

    The totals make the loss exact however the mini-batch is split: each micro-batch's mean is weighted
    by its share of the mini-batch's tokens (token_mean) or sequences (seq_mean), see `loss_weight`.
    """

    experiences: list[Experience]
    total_actions: int  # action tokens in the mini-batch, all ranks
    total_sequences: int  # rollouts with at least one action token in the mini-batch, all ranks


@dataclass(eq=False)
class PaddedBatch:
    """A micro-batch right-padded to its longest row: every field [B, L_max] (padding: 0 / False)."""

    input_ids: torch.Tensor  # [B, L] int64
    attention_mask: torch.Tensor  # [B, L] int64, 1 on real tokens
    action_mask: torch.Tensor  # [B, L] bool
    old_log_probs: torch.Tensor  # [B, L] float32
    advantages: torch.Tensor  # [B, L] float32
    ref_log_probs: torch.Tensor | None = None  # [B, L] float32 (KL on)
    old_values: torch.Tensor | None = None  # [B, L] float32 (ppo)
    returns: torch.Tensor | None = None  # [B, L] float32 (ppo)

    def to(self, device: torch.device | str) -> PaddedBatch:
        """The same batch with every tensor on `device`."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return PaddedBatch(**{k: v.to(device) if v is not None else None for k, v in moved.items()})


def pad_experiences(exps: list[Experience]) -> PaddedBatch:
    """Right-pad a micro-batch; an optional field is padded when every row has it (an error if only some do)."""
    optional = {}
    for name in ("ref_log_probs", "old_values", "returns"):
        values = [getattr(e, name) for e in exps]
        if all(v is not None for v in values):
            optional[name] = pad_right(values, 0.0)
        elif any(v is not None for v in values):
            raise ValueError(f"Experience.{name} is set on some rows of the micro-batch but not on all")
    return PaddedBatch(
        input_ids=pad_right([e.input_ids for e in exps], 0),
        attention_mask=pad_right([torch.ones(e.num_tokens, dtype=torch.long) for e in exps], 0),
        action_mask=pad_right([e.action_mask for e in exps], False),
        old_log_probs=pad_right([e.old_log_probs for e in exps], 0.0),
        advantages=pad_right([e.advantages for e in exps], 0.0),
        **optional,
    )


def micro_batches(exps: list[Experience], micro_batch_size: int) -> list[list[Experience]]:
    """Split a rank's mini-batch into ceil(n / micro_batch_size) micro-batches of similar lengths
    (sorted by token count, then chunked), so little compute goes to padding."""
    order = sorted(range(len(exps)), key=lambda i: exps[i].num_tokens)
    return [
        [exps[i] for i in order[k : k + micro_batch_size]] for k in range(0, len(order), micro_batch_size)
    ]


def loss_weight(
    micro: list[Experience], batch: MiniBatch, agg: str, grad_accum: int, world_size: int
) -> float:
    """Factor that turns a micro-batch's aggregated loss into its exact share of the mini-batch's loss.

    DeepSpeed divides every micro-batch loss by `grad_accum` and averages gradients over the
    `world_size` ranks, so a micro-batch holding n of the mini-batch's N units (tokens for token_mean,
    sequences for seq_mean) is weighted n / N · grad_accum · world_size: the sum over all micro-batches
    and ranks is then the mini-batch's token (or sequence) mean, independent of how it was split.
    """
    if agg == "token_mean":
        n, total = sum(e.num_actions for e in micro), batch.total_actions
    elif agg == "seq_mean":
        n, total = sum(1 for e in micro if e.num_actions > 0), batch.total_sequences
    else:
        raise ValueError(f"agg={agg!r} is not an aggregation; accepted: {', '.join(AGG_UNITS)}")
    return n / max(total, 1) * grad_accum * world_size


def per_rank_minibatch_size(rollouts_per_step: int, mini_batches: int, world_size: int) -> int:
    """Rollouts per rank per mini-batch; ValueError naming the keys unless it divides evenly."""
    if rollouts_per_step % (mini_batches * world_size):
        raise ValueError(
            f"train.prompts_per_step x rollout.n_samples = {rollouts_per_step} rollouts per step must divide "
            f"evenly into train.mini_batches ({mini_batches}) x resources.policy.num_actors ({world_size}); "
            "every policy rank takes the same number of micro-batches per optimiser step"
        )
    return rollouts_per_step // (mini_batches * world_size)


def grad_accum_steps(rank_minibatch: int, micro_batch_size: int) -> int:
    """Micro-batches per optimiser step on each rank."""
    return math.ceil(rank_minibatch / micro_batch_size)


def split_for_update(
    exps: list[Experience], *, epochs: int, mini_batches: int, world_size: int, seed: int, step: int
) -> list[list[MiniBatch]]:
    """The step's rollouts as `epochs x mini_batches` optimiser steps, each split across `world_size`
    ranks with equal rollout counts and balanced token counts (OpenRLHF's Karmarkar-Karp partitioning).

    Epoch e visits the rollouts in a seeded order (seed, step, e), identity for a single mini-batch.
    Returns per rank the list of its MiniBatches, in optimiser-step order.
    """
    per_rank = per_rank_minibatch_size(len(exps), mini_batches, world_size)
    plan: list[list[MiniBatch]] = [[] for _ in range(world_size)]
    for epoch in range(epochs):
        order = list(range(len(exps)))
        if mini_batches > 1:
            order = np.random.default_rng([seed, step, epoch]).permutation(len(exps)).tolist()
        size = per_rank * world_size
        for k in range(mini_batches):
            members = [exps[i] for i in order[k * size : (k + 1) * size]]
            total_actions = sum(e.num_actions for e in members)
            total_sequences = sum(1 for e in members if e.num_actions > 0)
            if world_size == 1:
                parts = [list(range(len(members)))]
            else:
                lengths = [e.num_tokens for e in members]
                parts = get_seqlen_balanced_partitions(lengths, world_size, equal_size=True)
            for rank, part in enumerate(parts):
                plan[rank].append(MiniBatch([members[i] for i in part], total_actions, total_sequences))
    return plan

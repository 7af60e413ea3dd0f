"""Group normalisation r̃_{i,t}, turn advantages Â_{i,t}, and their broadcast onto tokens (DESIGN.md).

Per-rollout rewards are short Python lists (a few turns x 16 rollouts), so this runs in float64 Python;
only the final token broadcast builds a tensor.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Hashable, Sequence

import torch

from igpo_rlhf.algo._checks import check_finite_floats, check_option, check_unit_interval

NORMS = ("joint", "separate")


def group_normalize(values: Sequence[float], adv_eps: float = 1e-6) -> list[float]:
    """r̃ = (r - mean) / (std + adv_eps) over one pool of a group, population std (ddof = 0).

    A pool whose values are all equal -- in particular a pool of one value -- normalises to exactly 0
    (computing mean and std in floats could leave a ~1e-11 residue instead).
    """
    n = len(values)
    if n == 0 or max(values) == min(values):
        return [0.0] * n
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n)
    return [(v - mean) / (std + adv_eps) for v in values]


def discounted_sums(normalized: Sequence[float], gamma: float = 1.0) -> list[float]:
    """Â_{i,t} = Σ_{k >= t} γ^{k-t} · r̃_{i,k}, for t = 1..T_i, of one rollout."""
    out = [0.0] * len(normalized)
    acc = 0.0
    for t in reversed(range(len(normalized))):
        acc = normalized[t] + gamma * acc
        out[t] = acc
    return out


def _group_members(group_ids: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    """Rollout indices of each group, groups in order of first appearance."""
    members: dict[Hashable, list[int]] = {}
    for i, gid in enumerate(group_ids):
        try:
            members.setdefault(gid, []).append(i)
        except TypeError as err:
            raise ValueError(f"group_ids[{i}]={gid!r} is not hashable; use a str or int per prompt") from err
    return members


def _check_eps(adv_eps: float) -> None:
    if not (isinstance(adv_eps, (int, float)) and math.isfinite(adv_eps) and adv_eps >= 0):
        raise ValueError(f"adv_eps={adv_eps!r} must be a finite number >= 0")


def turn_advantages(
    turn_rewards: Sequence[Sequence[float]],
    group_ids: Sequence[Hashable],
    *,
    gamma: float = 1.0,
    norm: str = "joint",
    adv_eps: float = 1e-6,
    ig_coef: float = 1.0,
) -> list[list[float]]:
    """Turn advantages Â_{i,t} of every rollout.

    `turn_rewards[i]` = [r_{i,1}, ..., r_{i,T_i-1}, r_{i,T_i}]: rollout i's IG rewards for its non-final
    turns followed by its outcome reward (so a list of length 1 is a GRPO rollout). `group_ids[i]`
    names the prompt group of rollout i. Rewards are normalised within each group
    (`group_normalize`): `norm="joint"` pools every r_{i,t} of the group; `norm="separate"` pools the
    IG rewards of the group among themselves and the outcomes among themselves. The normalised IG rewards
    (t < T_i) are then multiplied by `ig_coef` (1: the paper; an extension of ours, not in the paper: with
    norm="separate", ig_coef=0 gives exactly GRPO's advantages). Then Â_{i,t} = Σ_{k >= t} γ^{k-t} r̃_{i,k}.
    Returns a list shaped like `turn_rewards`.
    """
    check_option("norm", norm, NORMS)
    check_unit_interval("gamma", gamma)
    _check_eps(adv_eps)
    if not (isinstance(ig_coef, (int, float)) and math.isfinite(ig_coef) and ig_coef >= 0):
        raise ValueError(f"ig_coef={ig_coef!r} must be a finite number >= 0")
    if len(turn_rewards) != len(group_ids):
        raise ValueError(
            f"turn_rewards has {len(turn_rewards)} rollouts but group_ids has {len(group_ids)}; one id per rollout"
        )
    if len(turn_rewards) == 0:
        raise ValueError("turn_rewards is empty; pass at least one rollout")
    rewards = []
    for i, row in enumerate(turn_rewards):
        if isinstance(row, (str, bytes)) or not hasattr(row, "__len__") or len(row) == 0:
            raise ValueError(
                f"turn_rewards[{i}]={row!r} must be a non-empty list ending with the outcome reward"
            )
        rewards.append(check_finite_floats(f"turn_rewards[{i}]", row))

    normalized = [[0.0] * len(row) for row in rewards]
    for members in _group_members(group_ids).values():
        if norm == "joint":
            pools = [[(i, t) for i in members for t in range(len(rewards[i]))]]
        else:
            ig_slots = [(i, t) for i in members for t in range(len(rewards[i]) - 1)]
            outcome_slots = [(i, len(rewards[i]) - 1) for i in members]
            pools = [ig_slots, outcome_slots]
        for pool in pools:
            pooled = group_normalize([rewards[i][t] for i, t in pool], adv_eps)
            for (i, t), value in zip(pool, pooled, strict=True):
                normalized[i][t] = value if t == len(rewards[i]) - 1 else ig_coef * value
    return [discounted_sums(row, gamma) for row in normalized]


def grpo_advantages(
    outcomes: Sequence[float], group_ids: Sequence[Hashable], adv_eps: float = 1e-6
) -> list[float]:
    """GRPO's advantage (r_i - mean) / (std + adv_eps) of each rollout's outcome r_i within its group.

    Equals `turn_advantages([[r] for r in outcomes], group_ids, adv_eps=adv_eps)` float for float.
    """
    _check_eps(adv_eps)
    if len(outcomes) != len(group_ids):
        raise ValueError(
            f"outcomes has {len(outcomes)} values but group_ids has {len(group_ids)}; one per rollout"
        )
    if len(outcomes) == 0:
        raise ValueError("outcomes is empty; pass at least one rollout")
    values = check_finite_floats("outcomes", outcomes)
    advantages = [0.0] * len(values)
    for members in _group_members(group_ids).values():
        for i, adv in zip(members, group_normalize([values[i] for i in members], adv_eps), strict=True):
            advantages[i] = adv
    return advantages


def token_advantages(
    turn_advs: Sequence[Sequence[float]],
    turn_spans: Sequence[Sequence[tuple[int, int]]],
    seq_len: int,
    *,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast Â_{i,t} onto token positions: returns (advantages [B, L], mask [B, L] bool), L = seq_len.

    `turn_spans[i][t] = (start, end)`: half-open positions of the tokens the policy generated in turn t
    (observation tokens lie outside the spans). Every position in the span gets Â_{i,t} and mask True;
    prompt, observations and padding get 0 and False. Spans must be in range, with start >= 1 (position 0
    is never an action), non-empty, in increasing order and non-overlapping, one per turn advantage.
    For GRPO on multi-turn rollouts pass `[[A_i] * len(turn_spans[i])]`: the outcome advantage on every turn.
    """
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len={seq_len!r} must be a positive int")
    if len(turn_advs) != len(turn_spans):
        raise ValueError(f"turn_advs has {len(turn_advs)} rollouts but turn_spans has {len(turn_spans)}")
    advantages = torch.zeros(len(turn_advs), seq_len, dtype=dtype)  # [B, L]
    mask = torch.zeros(len(turn_advs), seq_len, dtype=torch.bool)  # [B, L]
    for i, (advs, spans) in enumerate(zip(turn_advs, turn_spans, strict=True)):
        advs = check_finite_floats(f"turn_advs[{i}]", advs)
        if len(advs) != len(spans):
            raise ValueError(f"rollout {i} has {len(advs)} turn advantages but {len(spans)} turn spans")
        prev_end = 1
        for t, span in enumerate(spans):
            try:
                start, end = (operator.index(x) for x in span)
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"turn_spans[{i}][{t}]={span!r} must be a (start, end) pair of ints"
                ) from err
            if not (prev_end <= start < end <= seq_len):
                raise ValueError(
                    f"turn_spans[{i}][{t}]=({start}, {end}) is invalid: need {prev_end} <= start < end <= "
                    f"seq_len={seq_len} (in range, non-empty, after the previous turn, position 0 excluded)"
                )
            advantages[i, start:end] = advs[t]
            mask[i, start:end] = True
            prev_end = end
    return advantages, mask

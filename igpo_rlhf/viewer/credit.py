"""Turn-level credit of one group of rollouts, recomputed from the rows with igpo_rlhf.algo.

For the n rollouts of one prompt (same step, same group_id), from the stored beliefs
[log b_{i,0}, ..., log b_{i,T_i-1}] and outcome rewards r_{i,T_i}, under the run's `algorithm` settings:

    r_{i,t}   IG rewards               info_gain_rewards(beliefs, ig_kind), t < T_i; outcome at t = T_i
    r̃_{i,t}   normalised in the group  turn_advantages(..., gamma=0): with γ = 0 the sum is r̃ itself
    Â_{i,t}   IGPO turn advantage      turn_advantages(rewards, group, gamma, norm, adv_eps, ig_coef)
    Â_i       GRPO advantage           grpo_advantages(outcomes, group, adv_eps), the same on every turn

so the viewer shows what each estimator gives the same rollouts, and checks the trainer's stored
`turn_advantages` against the recomputation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

from igpo_rlhf.algo import grpo_advantages, info_gain_rewards, turn_advantages
from igpo_rlhf.config import AlgorithmConfig

# A stored advantage equal to the recomputed one within this (absolute, float64 both ways).
MATCH_TOL = 1e-6


@dataclass(frozen=True)
class CreditSettings:
    """The `algorithm` fields the credit depends on (defaults: AlgorithmConfig's)."""

    estimator: str = AlgorithmConfig.model_fields["estimator"].default
    ig_kind: str = AlgorithmConfig.model_fields["ig_kind"].default
    norm: str = AlgorithmConfig.model_fields["norm"].default
    gamma: float = AlgorithmConfig.model_fields["gamma"].default
    ig_coef: float = AlgorithmConfig.model_fields["ig_coef"].default
    adv_eps: float = AlgorithmConfig.model_fields["adv_eps"].default
    outcome_metric: str = AlgorithmConfig.model_fields["outcome_metric"].default
    f1_variant: str = AlgorithmConfig.model_fields["f1_variant"].default
    format_penalty: float = AlgorithmConfig.model_fields["format_penalty"].default

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None) -> CreditSettings:
        """From a config's `algorithm` mapping; keys it does not have keep the defaults."""
        section = section or {}
        return cls(**{f.name: section[f.name] for f in fields(cls) if f.name in section})


@dataclass(frozen=True)
class RolloutInput:
    """What the credit of one rollout is computed from."""

    num_turns: int  # T_i
    outcome: float  # r_{i,T_i}
    log_beliefs: list[float] | None  # [log b_{i,0}, ..., log b_{i,T_i-1}]; None: not scored (grpo, ppo)


@dataclass
class RolloutCredit:
    """One rollout's credit under both estimators; IGPO fields are None when the group has no beliefs."""

    ig_rewards: list[float] | None  # [T_i - 1] r_{i,1..T_i-1}
    rewards: list[float] | None  # [T_i] IGPO's turn rewards: IG rewards, then the outcome
    normalized: list[float] | None  # [T_i] r̃_{i,t}
    igpo: list[float] | None  # [T_i] Â_{i,t}
    grpo: list[float]  # [T_i] GRPO's Â_i on every turn


@dataclass
class GroupCredit:
    rollouts: list[RolloutCredit]
    note: str | None  # why IGPO's credit is missing, when it is


def group_credit(rollouts: Sequence[RolloutInput], settings: CreditSettings) -> GroupCredit:
    """Both estimators' credit for the rollouts of one group (all of them: the pools are the group)."""
    if not rollouts:
        raise ValueError("group_credit: no rollouts; a group has at least one")
    group = [0] * len(rollouts)
    grpo = grpo_advantages([r.outcome for r in rollouts], group, settings.adv_eps)
    grpo_rows = [[a] * r.num_turns for a, r in zip(grpo, rollouts, strict=True)]
    note = None
    missing = [i for i, r in enumerate(rollouts) if r.log_beliefs is None]
    if missing:
        note = (
            f"{len(missing)} of the group's {len(rollouts)} rollouts have no beliefs (the run's estimator "
            f"{settings.estimator!r} does not score them), so IGPO's credit cannot be computed"
        )
    else:
        for i, r in enumerate(rollouts):
            if len(r.log_beliefs or []) != r.num_turns:
                note = f"rollout {i} has {r.num_turns} turns but {len(r.log_beliefs or [])} beliefs (need one per turn)"
                break
    if note is not None:
        return GroupCredit([RolloutCredit(None, None, None, None, g) for g in grpo_rows], note)
    ig = [info_gain_rewards(r.log_beliefs or [], settings.ig_kind) for r in rollouts]
    rewards = [g + [r.outcome] for g, r in zip(ig, rollouts, strict=True)]
    common = {"norm": settings.norm, "adv_eps": settings.adv_eps, "ig_coef": settings.ig_coef}
    normalized = turn_advantages(rewards, group, gamma=0.0, **common)
    igpo = turn_advantages(rewards, group, gamma=settings.gamma, **common)
    out = [RolloutCredit(*parts) for parts in zip(ig, rewards, normalized, igpo, grpo_rows, strict=True)]
    return GroupCredit(out, None)


@dataclass
class CreditCheck:
    """The trainer's stored turn advantages against the recomputation."""

    status: Literal["match", "mismatch", "not_checked"]
    max_abs_diff: float | None
    message: str


def check_stored(
    stored: Sequence[Sequence[float] | None], credit: GroupCredit, settings: CreditSettings
) -> CreditCheck:
    """Compare each rollout's stored `turn_advantages` with what its estimator recomputes to."""
    if settings.estimator == "ppo":
        return CreditCheck(
            "not_checked",
            None,
            "ppo: the stored advantages are per-turn means of GAE over the critic's values",
        )
    if any(s is None for s in stored):
        return CreditCheck("not_checked", None, "the rows store no turn_advantages")
    which = "grpo" if settings.estimator == "grpo" else "igpo"
    worst = 0.0
    for i, (s, c) in enumerate(zip(stored, credit.rollouts, strict=True)):
        recomputed = c.grpo if which == "grpo" else c.igpo
        if recomputed is None:
            return CreditCheck("not_checked", None, credit.note or "no recomputation")
        if len(s or []) != len(recomputed):
            return CreditCheck(
                "mismatch", None, f"rollout {i}: {len(s or [])} stored advantages for {len(recomputed)} turns"
            )
        worst = max([worst, *(abs(float(a) - b) for a, b in zip(s or [], recomputed, strict=True))])
    if worst <= MATCH_TOL:
        return CreditCheck("match", worst, f"stored Â equal {which}'s recomputation (max |Δ| {worst:.1e})")
    return CreditCheck(
        "mismatch", worst, f"stored Â differ from {which}'s recomputation by up to {worst:.3g}"
    )

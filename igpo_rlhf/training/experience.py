"""From scored rollouts to per-token advantages: the controller's reward and advantage assembly.

For every rollout i of a step (DESIGN.md "IGPO, precisely"):

    outcome   r_{i,T_i} = F1 (or EM / cover-EM) of the answer, max over aliases; format_penalty if none
    igpo      r_{i,t}   = info_gain_rewards([log b_{i,0}, ..., log b_{i,T_i-1}])   t = 1..T_i-1
              turn rewards [r_{i,1}, ..., r_{i,T_i-1}, r_{i,T_i}] → turn_advantages over the step's groups
              (group-normalised, discounted sums Â_{i,t}) → every token of turn t gets Â_{i,t}
    grpo      turn rewards [r_{i,T_i}] alone → Â_i = (r - mean) / (std + ε) in the group, on every turn
    ppo       reward r_{i,T_i} on the last action token, critic values → GAE over action tokens

The math is igpo_rlhf.algo; this module only wires trajectories to it, checking the counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from igpo_rlhf.algo import gae_advantages, info_gain_rewards, token_advantages, turn_advantages
from igpo_rlhf.rewards import exact_match, f1_score, outcome_reward
from igpo_rlhf.training.logprobs import pad_right

if TYPE_CHECKING:
    from igpo_rlhf.config import AlgorithmConfig
    from igpo_rlhf.rollout.trajectory import Trajectory

ESTIMATORS = ("igpo", "grpo", "ppo")


@dataclass
class Outcome:
    """The outcome of one rollout: the reward r_{i,T_i} and the answer's scores."""

    reward: float  # r_{i,T_i}: the configured metric, or the format penalty without an answer
    f1: float  # 0 without an answer
    em: float  # 0 without an answer
    answered: bool  # a well-formed answer was given


def score_outcomes(trajectories: Sequence[Trajectory], algo: AlgorithmConfig) -> list[Outcome]:
    """Outcome of each trajectory (its `answer` and `golds`) under `algorithm.outcome_metric` etc."""
    out = []
    for traj in trajectories:
        reward = outcome_reward(
            traj.answer,
            traj.golds,
            metric=algo.outcome_metric,
            variant=algo.f1_variant,
            format_penalty=algo.format_penalty,
        )
        if traj.answer is None:
            out.append(Outcome(reward, 0.0, 0.0, False))
        else:
            f1 = f1_score(traj.answer, traj.golds, algo.f1_variant)
            em = exact_match(traj.answer, traj.golds, algo.f1_variant)
            out.append(Outcome(reward, f1, em, True))
    return out


def turn_rewards(
    beliefs: Sequence[Sequence[float]] | None,
    outcomes: Sequence[float],
    num_turns: Sequence[int],
    *,
    estimator: str,
    ig_kind: str = "prob_diff",
) -> list[list[float]]:
    """Each rollout's turn rewards: igpo [r_{i,1..T_i-1} (IG), r_{i,T_i} (outcome)]; grpo [r_{i,T_i}].

    `beliefs[i]` = [log b_{i,0}, ..., log b_{i,T_i-1}]: exactly T_i beliefs for T_i turns (igpo only).
    """
    if estimator == "grpo":
        return [[float(r)] for r in outcomes]
    if estimator != "igpo":
        raise ValueError(f"estimator={estimator!r} has no turn rewards; accepted: 'igpo', 'grpo'")
    if beliefs is None or len(beliefs) != len(outcomes) or len(num_turns) != len(outcomes):
        raise ValueError(
            f"igpo needs one belief list per rollout: {len(outcomes)} outcomes, {len(num_turns)} turn counts, "
            f"{'no' if beliefs is None else len(beliefs)} belief lists"
        )
    rewards = []
    for i, (b, r, t) in enumerate(zip(beliefs, outcomes, num_turns, strict=True)):
        if len(b) != t:
            raise ValueError(
                f"rollout {i} has {t} turns but {len(b)} beliefs; a T-turn rollout has T beliefs"
            )
        rewards.append(info_gain_rewards(list(b), ig_kind) + [float(r)])
    return rewards


def turn_level_advantages(
    rewards: Sequence[Sequence[float]],
    group_ids: Sequence[int],
    num_turns: Sequence[int],
    *,
    gamma: float,
    norm: str,
    eps: float,
) -> list[list[float]]:
    """Â_{i,t} for t = 1..T_i of every rollout.

    igpo (T_i rewards each): `turn_advantages` (group-normalised, discounted). grpo (one reward each):
    the group-normalised outcome advantage, the same on every one of the rollout's T_i turns.
    """
    advs = turn_advantages(rewards, group_ids, gamma=gamma, norm=norm, eps=eps)
    out = []
    for i, (a, t) in enumerate(zip(advs, num_turns, strict=True)):
        if len(a) == t:
            out.append(a)
        elif len(a) == 1:
            out.append(a * t)
        else:
            raise ValueError(f"rollout {i}: {len(a)} turn advantages for {t} turns")
    return out


def token_advantage_rows(
    turn_advs: Sequence[Sequence[float]],
    turn_spans: Sequence[Sequence[tuple[int, int]]],
    lengths: Sequence[int],
) -> list[torch.Tensor]:
    """Â broadcast onto each rollout's tokens: one [L_i] float32 row each (0 off the turns' spans)."""
    adv, _ = token_advantages(turn_advs, turn_spans, max(lengths))  # [B, L_max]
    return [adv[i, :n].clone() for i, n in enumerate(lengths)]


def ppo_advantages(
    outcomes: Sequence[float],
    values: Sequence[torch.Tensor],
    action_masks: Sequence[torch.Tensor],
    *,
    gamma: float,
    lam: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """GAE advantages and returns, one [L_i] row each: the outcome r_{i,T_i} is the reward of the last
    action token, values V(s_j) come from the critic before the update."""
    rewards = []
    for i, (r, m) in enumerate(zip(outcomes, action_masks, strict=True)):
        row = torch.zeros(m.numel(), dtype=torch.float32)
        idx = torch.nonzero(m).flatten()
        if idx.numel() == 0:
            raise ValueError(f"rollout {i} has no action token to carry its outcome reward")
        row[idx[-1]] = float(r)
        rewards.append(row)
    lengths = [int(m.numel()) for m in action_masks]
    adv, returns = gae_advantages(
        pad_right(rewards, 0.0),
        pad_right([v.float() for v in values], 0.0),
        pad_right([m.bool() for m in action_masks], False),
        gamma=gamma,
        lam=lam,
    )  # [B, L_max] each
    return [adv[i, :n].clone() for i, n in enumerate(lengths)], [
        returns[i, :n].clone() for i, n in enumerate(lengths)
    ]

"""From scored rollouts to per-token advantages: the controller's reward and advantage assembly.

For every rollout i of a step (DESIGN.md "IGPO, precisely"):

    outcome   r_{i,T_i} = F1 (or EM / cover-EM) of the answer, max over aliases; format_penalty if none
    igpo      r_{i,t}   = info_gain_rewards([log b_{i,0}, ..., log b_{i,T_i-1}])   t = 1..T_i-1
              turn rewards [r_{i,1}, ..., r_{i,T_i-1}, r_{i,T_i}] → turn_advantages over the step's groups
              (group-normalised, discounted sums Â_{i,t}) → every token of turn t gets Â_{i,t}
    grpo      turn rewards [r_{i,T_i}] alone → Â_i = (r - mean) / (std + ε) in the group, on every turn
    ppo       reward r_{i,T_i} on the last action token, critic values → GAE over action tokens

The math is igpo_rlhf.algo; this module only wires trajectories to it, checking the counts. The trainer's
step reads it top to bottom:

    outcomes    = score_outcomes(trajectories, algo)                    r_{i,T_i}, F1, EM
    credit      = assign_credit(trajectories, outcomes, scores, algo)   r_{i,t}, Â_{i,t}, per-token Â
    experiences = make_experiences(trajectories, scores, credit)        what the policy trains on
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from igpo_rlhf.algo import gae_advantages, info_gain_rewards, token_advantages, turn_advantages
from igpo_rlhf.rewards import exact_match, f1_score, outcome_reward
from igpo_rlhf.training.batch import Experience
from igpo_rlhf.training.logprobs import pad_right

if TYPE_CHECKING:
    from igpo_rlhf.config import AlgorithmConfig
    from igpo_rlhf.rollout.trajectory import Trajectory


@dataclass
class Scores:
    """What the scoring phase measured, one entry per trajectory (in the step's order)."""

    old_log_probs: list[torch.Tensor]  # [L_i] float32: log π_θold(tok_j | tok_<j), 0 off the action mask
    beliefs: list[list[float]] | None = None  # [T_i]: log b_{i,0..T_i-1} (estimator=igpo)
    ref_log_probs: list[torch.Tensor] | None = None  # [L_i] float32: log π_ref (kl_coef > 0)
    values: list[torch.Tensor] | None = None  # [L_i] float32: V(s_j) before the update (estimator=ppo)


@dataclass
class Credit:
    """Rewards and advantages of a step's rollouts, one entry per trajectory."""

    turn_rewards: list[list[float]]  # igpo: [r_{i,1..T_i-1} (IG), r_{i,T_i}]; grpo and ppo: [r_{i,T_i}]
    turn_advantages: list[list[float]]  # [T_i]: Â_{i,t} (ppo: the mean GAE advantage of the turn's tokens)
    token_advantages: list[torch.Tensor]  # [L_i] float32: the advantage of every token, 0 off the turns
    returns: list[torch.Tensor] | None = None  # [L_i] float32: GAE targets (ppo)


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
    adv_eps: float,
    ig_coef: float = 1.0,
) -> list[list[float]]:
    """Â_{i,t} for t = 1..T_i of every rollout.

    igpo (T_i rewards each): `turn_advantages` (group-normalised, discounted). grpo (one reward each):
    the group-normalised outcome advantage, the same on every one of the rollout's T_i turns.
    """
    advs = turn_advantages(rewards, group_ids, gamma=gamma, norm=norm, adv_eps=adv_eps, ig_coef=ig_coef)
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
    gae_lambda: float,
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
        gae_lambda=gae_lambda,
    )  # [B, L_max] each
    return [adv[i, :n].clone() for i, n in enumerate(lengths)], [
        returns[i, :n].clone() for i, n in enumerate(lengths)
    ]


def assign_credit(
    trajectories: Sequence[Trajectory], outcomes: Sequence[Outcome], scores: Scores, algo: AlgorithmConfig
) -> Credit:
    """Turn rewards and advantages of every rollout under `algorithm.estimator` (module docstring)."""
    rewards = [o.reward for o in outcomes]
    lengths = [len(t.token_ids) for t in trajectories]
    if algo.estimator == "ppo":
        if scores.values is None:
            raise ValueError("estimator=ppo needs the critic's values in Scores.values")
        masks = [torch.tensor(t.action_mask, dtype=torch.bool) for t in trajectories]
        token_adv, returns = ppo_advantages(
            rewards, scores.values, masks, gamma=algo.gae_gamma, gae_lambda=algo.gae_lambda
        )
        per_turn = [
            [float(row[a:b].mean()) for a, b in t.turn_spans]
            for row, t in zip(token_adv, trajectories, strict=True)
        ]
        return Credit([[r] for r in rewards], per_turn, token_adv, returns)
    num_turns = [t.num_turns for t in trajectories]
    turn_r = turn_rewards(scores.beliefs, rewards, num_turns, estimator=algo.estimator, ig_kind=algo.ig_kind)
    per_turn = turn_level_advantages(
        turn_r,
        [t.group_id for t in trajectories],
        num_turns,
        gamma=algo.gamma,
        norm=algo.norm,
        adv_eps=algo.adv_eps,
        ig_coef=algo.ig_coef,
    )
    token_adv = token_advantage_rows(per_turn, [t.turn_spans for t in trajectories], lengths)
    return Credit(turn_r, per_turn, token_adv)


def make_experiences(trajectories: Sequence[Trajectory], scores: Scores, credit: Credit) -> list[Experience]:
    """One Experience per rollout: exactly the sampled token ids, the action mask, θ_old's and π_ref's
    log-probs, the per-token advantages (and values / returns for ppo)."""
    exps = []
    for i, traj in enumerate(trajectories):
        exps.append(
            Experience(
                input_ids=torch.tensor(traj.token_ids, dtype=torch.long),
                action_mask=torch.tensor(traj.action_mask, dtype=torch.bool),
                old_log_probs=scores.old_log_probs[i].float(),
                advantages=credit.token_advantages[i],
                ref_log_probs=scores.ref_log_probs[i] if scores.ref_log_probs is not None else None,
                old_values=scores.values[i] if scores.values is not None else None,
                returns=credit.returns[i] if credit.returns is not None else None,
            )
        )
    return exps

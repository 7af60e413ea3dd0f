"""Generalised advantage estimation (Schulman et al. 2016) for the PPO baseline, over action tokens only.

OpenRLHF's `get_advantages_and_returns` multiplies rewards and values by the action mask but still
steps through every position: in a multi-turn rollout the last action token before an observation
bootstraps from V = 0, and later turns' credit is discounted by γλ once more per observation token.
We write our own GAE that skips those tokens instead.
"""

from __future__ import annotations

import torch

from igpo_rlhf.algo._checks import check_finite_where, check_same_shape, check_unit_interval


@torch.no_grad()
def gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 1.0,
    gae_lambda: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE advantages and critic targets, both [B, L], from rewards, values and the action mask [B, L].

    Let j_1 < ... < j_K be the positions where mask[b] is True (the tokens the policy generated).
    Prompt and observation tokens are skipped: the value of the next *action* token is the bootstrap,
    as if the observation tokens were not there (they are not the agent's actions, and the critic's
    value at the next action token has already read them):

        δ_k = r_{j_k} + γ · V_{j_{k+1}} - V_{j_k}        (V_{j_{K+1}} = 0: the episode ends)
        A_k = δ_k + γλ · A_{k+1}                          (A_{K+1} = 0)
        R_k = A_k + V_{j_k}                               (the critic's regression target)

    `values[b, j]` = V(s_j), the value of the state in which token j is chosen (aligned like log_probs).
    Rewards usually sit on the last action token; a non-zero reward off the mask is an error (it would
    be dropped). Advantages and returns are 0 off the mask. No gradient flows.
    """
    check_same_shape(rewards=rewards, values=values, mask=mask)
    check_unit_interval("gamma", gamma)
    check_unit_interval("gae_lambda", gae_lambda)
    m = mask.bool()
    check_finite_where(m, rewards=rewards, values=values)
    stray = ~m & (rewards != 0)
    if bool(stray.any()):
        b, j = (int(i) for i in stray.nonzero()[0])
        raise ValueError(f"rewards[{b}, {j}]={rewards[b, j].item()} sits on a position where mask is False")

    dtype = torch.promote_types(values.dtype, torch.float32)  # at least float32; float64 stays float64
    r = rewards.to(dtype)
    v = values.to(dtype)
    advantages = torch.zeros_like(v)  # [B, L]
    next_value = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)  # V_{j_{k+1}} per row [B]
    next_adv = torch.zeros_like(next_value)  # A_{k+1} per row [B]
    for j in reversed(range(v.shape[1])):
        delta = r[:, j] + gamma * next_value - v[:, j]
        adv = delta + gamma * gae_lambda * next_adv
        is_action = m[:, j]
        advantages[:, j] = torch.where(is_action, adv, torch.zeros_like(adv))
        next_adv = torch.where(is_action, adv, next_adv)  # off the mask, carry the later action's values on
        next_value = torch.where(is_action, v[:, j], next_value)
    returns = torch.where(m, advantages + v, torch.zeros_like(v))
    return advantages, returns

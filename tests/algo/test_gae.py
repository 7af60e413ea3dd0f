"""GAE over action tokens: a hand case across an observation, limits λ=0 / λ=1, a slow reference, errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from igpo_rlhf.algo import gae_advantages


def slow_gae(rewards, values, mask, gamma, lam):
    """Obvious reference: compress each row to its action tokens, then A_k = Σ_l (γλ)^l δ_{k+l}."""
    advantages = [[0.0] * len(row) for row in rewards]
    returns = [[0.0] * len(row) for row in rewards]
    for b in range(len(rewards)):
        pos = [j for j, m in enumerate(mask[b]) if m]
        v = [values[b][j] for j in pos] + [0.0]  # V after the last action: the episode ends
        delta = [rewards[b][pos[k]] + gamma * v[k + 1] - v[k] for k in range(len(pos))]
        for k, j in enumerate(pos):
            advantages[b][j] = sum((gamma * lam) ** i * delta[k + i] for i in range(len(pos) - k))
            returns[b][j] = advantages[b][j] + v[k]
    return advantages, returns


def test_gae_by_hand_across_an_observation():
    # position: 0 prompt | 1 2 turn 1 | 3 observation | 4 5 turn 2 | 6 padding; reward 1 on the last action
    # values off the mask are garbage on purpose: they must not be used
    values = torch.tensor([[50.0, 0.1, 0.2, 99.0, 0.5, 0.6, -7.0]])
    rewards = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]])
    mask = torch.tensor([[0, 1, 1, 0, 1, 1, 0]]).bool()
    adv, ret = gae_advantages(rewards, values, mask, gamma=1.0, gae_lambda=0.5)
    # δ5 = 1 + 0 - 0.6 = 0.4          A5 = 0.4
    # δ4 = 0 + 0.6 - 0.5 = 0.1        A4 = 0.1 + 0.5·0.4  = 0.3
    # δ2 = 0 + 0.5 - 0.2 = 0.3        A2 = 0.3 + 0.5·0.3  = 0.45   (bootstraps from V4, skipping position 3)
    # δ1 = 0 + 0.2 - 0.1 = 0.1        A1 = 0.1 + 0.5·0.45 = 0.325
    assert adv.tolist()[0] == pytest.approx([0, 0.325, 0.45, 0, 0.3, 0.4, 0], abs=1e-6)
    # R = A + V on the actions
    assert ret.tolist()[0] == pytest.approx([0, 0.425, 0.65, 0, 0.8, 1.0, 0], abs=1e-6)


def test_lambda_one_gives_monte_carlo_returns_and_lambda_zero_gives_td():
    values = torch.tensor([[0.0, 0.3, 0.9, 0.4]])
    rewards = torch.tensor([[0.0, 0.5, 0.0, 2.0]])
    mask = torch.tensor([[0, 1, 1, 1]]).bool()
    # γ = 0.9, λ = 1: R_k = Σ_l γ^l r_{k+l}: R3 = 2, R2 = 0 + 0.9·2 = 1.8, R1 = 0.5 + 0.9·1.8 = 2.12
    adv, ret = gae_advantages(rewards, values, mask, gamma=0.9, gae_lambda=1.0)
    assert ret.tolist()[0] == pytest.approx([0, 2.12, 1.8, 2.0], abs=1e-6)
    assert adv.tolist()[0] == pytest.approx([0, 2.12 - 0.3, 1.8 - 0.9, 2.0 - 0.4], abs=1e-6)
    # λ = 0: A_k = δ_k = r + γV' - V: A1 = 0.5 + 0.81 - 0.3 = 1.01, A2 = 0.36 - 0.9 = -0.54, A3 = 2 - 0.4 = 1.6
    adv, _ = gae_advantages(rewards, values, mask, gamma=0.9, gae_lambda=0.0)
    assert adv.tolist()[0] == pytest.approx([0, 1.01, -0.54, 1.6], abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 9),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
    st.integers(0, 2**31),
)
def test_matches_the_slow_reference(batch, length, gamma, lam, seed):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, length, generator=gen) < 0.6
    values = torch.randn(batch, length, generator=gen, dtype=torch.float64)
    rewards = torch.randn(batch, length, generator=gen, dtype=torch.float64) * mask
    adv, ret = gae_advantages(rewards, values, mask, gamma=gamma, gae_lambda=lam)
    exp_adv, exp_ret = slow_gae(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
    for b in range(batch):
        assert adv[b].tolist() == pytest.approx(exp_adv[b], abs=1e-5)
        assert ret[b].tolist() == pytest.approx(exp_ret[b], abs=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "rewards", "match"),
    [
        ({}, [[0.0, 1.0, 0.5]], r"rewards\[0, 2\]=0.5 sits on a position where mask is False"),
        ({}, [[0.0, float("nan"), 0.0]], r"rewards\[0, 1\]=nan is not finite"),
        ({"gamma": 1.1}, [[0.0, 1.0, 0.0]], r"gamma=1.1 must be a number in \[0, 1\]"),
        ({"gae_lambda": -0.5}, [[0.0, 1.0, 0.0]], r"gae_lambda=-0.5 must be a number in \[0, 1\]"),
    ],
)
def test_gae_rejects_bad_input(kwargs, rewards, match):
    mask = torch.tensor([[False, True, False]])
    with pytest.raises(ValueError, match=match):
        gae_advantages(torch.tensor(rewards), torch.zeros(1, 3), mask, **kwargs)


def test_gae_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"values has shape \[1, 2\] but rewards has \[1, 3\]"):
        gae_advantages(torch.zeros(1, 3), torch.zeros(1, 2), torch.ones(1, 3, dtype=torch.bool))

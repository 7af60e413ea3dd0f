"""PPO policy loss, KL estimators, value loss and masked aggregation: hand cases, properties, errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from igpo_rlhf.algo import kl_penalty, masked_aggregate, policy_loss, value_loss

# --- masked aggregation --------------------------------------------------------------------------------


def test_masked_aggregate_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0, float("nan")], [4.0, 9.0, 9.0, 9.0], [7.0, 7.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    # token mean: (1 + 2 + 3 + 4) / 4 tokens = 2.5  (the NaN and the 9s and 7s are masked out)
    assert masked_aggregate(x, mask, "token_mean").item() == pytest.approx(2.5)
    # seq mean: rows with tokens only: ((1 + 2 + 3)/3 + 4/1) / 2 = (2 + 4) / 2 = 3
    assert masked_aggregate(x, mask, "seq_mean").item() == pytest.approx(3.0)


def test_masked_aggregate_of_an_empty_mask_is_zero_with_a_graph():
    x = torch.ones(2, 3, requires_grad=True)
    for agg in ("token_mean", "seq_mean"):
        out = masked_aggregate(x, torch.zeros(2, 3, dtype=torch.bool), agg)
        out.backward()
        assert out.item() == 0.0 and x.grad.abs().sum().item() == 0.0


def test_masked_aggregate_rejects_bad_input():
    with pytest.raises(ValueError, match="agg='mean' is not an option; accepted: 'token_mean', 'seq_mean'"):
        masked_aggregate(torch.ones(1, 2), torch.ones(1, 2), "mean")
    with pytest.raises(ValueError, match=r"mask has shape \[1, 3\] but x has \[1, 2\]"):
        masked_aggregate(torch.ones(1, 2), torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"x has shape \[2\]; expected a 2-D \[B, L\] tensor"):
        masked_aggregate(torch.ones(2), torch.ones(2))


# --- policy loss ----------------------------------------------------------------------------------------


def _row(*values):
    return torch.tensor([list(values)], dtype=torch.float32)


def test_policy_loss_by_hand():
    # position 0 is the prompt; tokens 1-4 are actions. ratios ρ = 1.5, 0.5, 1.1, 0.7; Â = 1, 1, -1, -1; ε = 0.2
    ratios = [1.5, 0.5, 1.1, 0.7]
    old = _row(-1.0, -2.0, -2.0, -2.0, -2.0)
    new = (old + torch.log(_row(1.0, *ratios))).requires_grad_(True)
    adv = _row(0.0, 1.0, 1.0, -1.0, -1.0)
    mask = _row(0, 1, 1, 1, 1).bool()
    loss, stats = policy_loss(new, old, adv, mask)
    # ℓ = -min(ρÂ, clip(ρ)Â):  -min(1.5, 1.2) = -1.2 (clipped) | -min(0.5, 0.8) = -0.5
    #                          -min(-1.1, -1.1) = 1.1          | -min(-0.7, -0.8) = 0.8 (clipped)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.1 + 0.8) / 4, abs=1e-6)
    assert stats["clip_frac"] == pytest.approx(2 / 4)
    assert stats["ratio_mean"] == pytest.approx(sum(ratios) / 4, abs=1e-6)
    assert stats["ratio_max"] == pytest.approx(1.5, abs=1e-6)
    assert stats["approx_kl"] == pytest.approx(sum(r - 1 - math.log(r) for r in ratios) / 4, abs=1e-6)
    assert stats["dual_clip_frac"] == 0.0 and "entropy" not in stats
    # gradient dℓ/dlog π = -ρÂ where unclipped, 0 where clipped; divided by the 4 tokens
    loss.backward()
    assert new.grad.tolist()[0] == pytest.approx([0.0, 0.0, -0.5 / 4, 1.1 / 4, 0.0], abs=1e-6)


def test_asymmetric_clip():
    # ρ = 1.25, Â = 1: ε_high = 0.28 leaves it unclipped (ℓ = -1.25); ε_high = 0.2 clips it (ℓ = -1.2)
    old, adv, mask = _row(0.0, -1.0), _row(0.0, 1.0), _row(0, 1).bool()
    new = old + math.log(1.25)
    assert policy_loss(new, old, adv, mask, clip_eps_high=0.28)[0].item() == pytest.approx(-1.25, abs=1e-6)
    assert policy_loss(new, old, adv, mask)[0].item() == pytest.approx(-1.2, abs=1e-6)
    # ρ = 0.75, Â = -1: ε_low = 0.2 clips at 0.8 (ℓ = 0.8); ε_low = 0.3 does not (ℓ = 0.75)
    new = old + math.log(0.75)
    assert policy_loss(new, old, -adv, mask)[0].item() == pytest.approx(0.8, abs=1e-6)
    assert policy_loss(new, old, -adv, mask, clip_eps_low=0.3)[0].item() == pytest.approx(0.75, abs=1e-6)


def test_dual_clip_by_hand():
    # ρ = 4, Â = -1: PPO gives -min(-4, -1.2) = 4; dual clip c = 3 caps it at -cÂ = 3 (no gradient)
    # ρ = 2, Â = -1: -min(-2, -1.2) = 2 < 3, unchanged;  ρ = 4, Â = +1: -min(4, 1.2) = -1.2, never dual-clipped
    old = _row(0.0, -3.0, -3.0, -3.0)
    new = (old + torch.log(_row(1.0, 4.0, 2.0, 4.0))).requires_grad_(True)
    adv, mask = _row(0.0, -1.0, -1.0, 1.0), _row(0, 1, 1, 1).bool()
    loss, stats = policy_loss(new, old, adv, mask, dual_clip=3.0)
    assert loss.item() == pytest.approx((3.0 + 2.0 - 1.2) / 3, abs=1e-6)
    assert stats["dual_clip_frac"] == pytest.approx(1 / 3)
    loss.backward()
    # only the ρ = 2 token has a gradient: -ρÂ / 3 = 2/3
    assert new.grad.tolist()[0] == pytest.approx([0.0, 0.0, 2 / 3, 0.0], abs=1e-6)
    without = policy_loss(new.detach(), old, adv, mask)[0].item()
    assert without == pytest.approx((4.0 + 2.0 - 1.2) / 3, abs=1e-6)


def test_seq_mean_weighs_rollouts_equally():
    # on-policy (ρ = 1): ℓ = -Â. Row 0 has 3 tokens with Â = 1, row 1 one token with Â = -2
    lp = torch.zeros(2, 4)
    adv = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, -2.0, 0.0, 0.0]])
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 0, 0]]).bool()
    # token mean: -(1 + 1 + 1 - 2) / 4 = -0.25;  seq mean: -((3/3) + (-2/1)) / 2 = 0.5
    assert policy_loss(lp, lp, adv, mask)[0].item() == pytest.approx(-0.25)
    assert policy_loss(lp, lp, adv, mask, agg="seq_mean")[0].item() == pytest.approx(0.5)


def test_entropy_stat_and_bonus():
    lp = torch.zeros(1, 3)
    adv, mask = _row(0.0, 1.0, 3.0), _row(0, 1, 1).bool()
    entropy = _row(9.0, 0.5, 1.5)
    plain, stats = policy_loss(lp, lp, adv, mask, entropy=entropy)
    assert stats["entropy"] == pytest.approx((0.5 + 1.5) / 2)
    assert plain.item() == pytest.approx(-(1.0 + 3.0) / 2)
    bonus, _ = policy_loss(lp, lp, adv, mask, entropy=entropy, entropy_coef=0.1)
    assert bonus.item() == pytest.approx(-2.0 - 0.1 * 1.0)


def test_padding_garbage_never_reaches_loss_or_gradient():
    new = torch.tensor([[float("nan"), -1.0, float("-inf")]], requires_grad=True)
    old = torch.tensor([[0.0, -1.2, float("inf")]])
    adv = torch.tensor([[float("nan"), 0.5, float("inf")]])
    mask = torch.tensor([[False, True, False]])
    loss, stats = policy_loss(new, old, adv, mask)
    loss.backward()
    # ρ = e^0.2 = 1.2214 > 1.2 with Â > 0: clipped, ℓ = -1.2 · 0.5
    assert loss.item() == pytest.approx(-0.6, abs=1e-6)
    assert torch.isfinite(new.grad).all() and stats["clip_frac"] == 1.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-3.0, 3.0, allow_subnormal=False), min_size=1, max_size=10), st.integers(0, 2**31))
def test_on_policy_loss_is_the_policy_gradient(advs, seed):
    # with θ = θ_old the ratio is 1, nothing is clipped, loss = -mean(Â) and dloss/dlog π_j = -Â_j / N
    n = len(advs)
    gen = torch.Generator().manual_seed(seed)
    lp = (-torch.rand(1, n + 1, generator=gen) * 5).requires_grad_(True)
    adv = torch.tensor([[0.0, *advs]])
    mask = torch.tensor([[False] + [True] * n])
    loss, stats = policy_loss(lp, lp.detach().clone(), adv, mask, dual_clip=3.0)
    loss.backward()
    assert loss.item() == pytest.approx(-sum(advs) / n, abs=1e-5)
    assert lp.grad[0, 1:].tolist() == pytest.approx([-a / n for a in advs], abs=1e-6)
    assert stats["clip_frac"] == 0.0 and stats["approx_kl"] == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip_eps_low": 1.0}, r"clip_eps_low=1.0 must be in \[0, 1\)"),
        ({"clip_eps_high": -0.1}, "clip_eps_high=-0.1 must be a finite number >= 0"),
        ({"dual_clip": 1.0}, "dual_clip=1.0 must be None or a finite number > 1"),
        ({"agg": "sum"}, "agg='sum' is not an option"),
        ({"entropy_coef": 0.01}, "entropy_coef=0.01 needs the per-token entropy tensor"),
        ({"entropy": torch.zeros(1, 2)}, r"entropy has shape \[1, 2\] but mask has \[1, 3\]"),
    ],
)
def test_policy_loss_rejects_bad_options(kwargs, match):
    lp = torch.zeros(1, 3)
    with pytest.raises(ValueError, match=match):
        policy_loss(lp, lp, lp, torch.ones(1, 3, dtype=torch.bool), **kwargs)


def test_policy_loss_rejects_non_finite_masked_values_and_shape_mismatch():
    lp, mask = torch.zeros(1, 3), torch.tensor([[False, True, True]])
    bad = torch.tensor([[0.0, 0.0, float("nan")]])
    with pytest.raises(ValueError, match=r"advantages\[0, 2\]=nan is not finite at a masked-in position"):
        policy_loss(lp, lp, bad, mask)
    with pytest.raises(ValueError, match=r"old_log_probs has shape \[1, 2\] but log_probs has \[1, 3\]"):
        policy_loss(lp, torch.zeros(1, 2), lp, mask)


# --- KL estimators ----------------------------------------------------------------------------------------


def test_kl_estimators_by_hand():
    # π = 0.5, π_ref = 0.25: log r = log 2;  π = 0.25, π_ref = 0.5: log r = -log 2
    lp = torch.log(torch.tensor([[0.5, 0.25]]))
    ref = torch.log(torch.tensor([[0.25, 0.5]]))
    ln2 = math.log(2)
    assert kl_penalty(lp, ref, kl_estimator="k1").tolist()[0] == pytest.approx([ln2, -ln2], abs=1e-6)
    assert kl_penalty(lp, ref, kl_estimator="k2").tolist()[0] == pytest.approx([ln2**2 / 2] * 2, abs=1e-6)
    # k3 = e^{-log r} - 1 + log r:  1/2 - 1 + ln2 = 0.1931;  2 - 1 - ln2 = 0.3069
    assert kl_penalty(lp, ref).tolist()[0] == pytest.approx([0.5 - 1 + ln2, 2 - 1 - ln2], abs=1e-6)


def test_kl_estimators_are_unbiased_by_sampling():
    # tokens sampled from π: E[k1] = E[k3] = KL(π || π_ref) = Σ π log(π / π_ref); k2 is biased but close
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    q = torch.tensor([0.3, 0.3, 0.2, 0.1, 0.1])
    exact = float((p * (p / q).log()).sum())  # 0.5 ln(5/3) + 0.2 ln(2/3) + 0.15 ln(3/4) + 0 + 0.05 ln(1/2)
    tokens = torch.multinomial(p, 400_000, replacement=True, generator=torch.Generator().manual_seed(0))
    lp, ref = p.log()[tokens][None], q.log()[tokens][None]
    assert kl_penalty(lp, ref, kl_estimator="k1").mean().item() == pytest.approx(exact, abs=3e-3)
    assert kl_penalty(lp, ref, kl_estimator="k3").mean().item() == pytest.approx(exact, abs=3e-3)
    assert kl_penalty(lp, ref, kl_estimator="k3").min().item() >= 0.0


def test_kl_clamp_and_mask():
    lp = torch.tensor([[-50.0, -1.0, float("nan")]], requires_grad=True)
    ref = torch.tensor([[0.0, -1.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    kl = kl_penalty(lp, ref, mask=mask)
    # log r = -50 is clamped to -10: k3 = e^10 - 1 - 10;  log r = 0: 0;  masked out: 0
    assert kl.tolist()[0] == pytest.approx([math.exp(10) - 11, 0.0, 0.0], rel=1e-6)
    masked_aggregate(kl, mask).backward()
    assert torch.isfinite(lp.grad).all() and lp.grad[0, 0].item() == 0.0  # no gradient past the clamp


def test_kl_rejects_bad_input():
    with pytest.raises(ValueError, match="kl_estimator=.k4' is not an option; accepted: 'k1', 'k2', 'k3'"):
        kl_penalty(torch.zeros(1, 2), torch.zeros(1, 2), kl_estimator="k4")
    with pytest.raises(ValueError, match="log_ratio_clip=0 must be a finite number > 0"):
        kl_penalty(torch.zeros(1, 2), torch.zeros(1, 2), log_ratio_clip=0)
    with pytest.raises(ValueError, match=r"ref_log_probs has shape \[1, 3\] but log_probs has \[1, 2\]"):
        kl_penalty(torch.zeros(1, 2), torch.zeros(1, 3))


# --- value loss ---------------------------------------------------------------------------------------------


def test_value_loss_by_hand():
    values = _row(9.0, 1.0, 2.0, 0.0).requires_grad_(True)
    old, returns, mask = _row(0.0, 0.5, 2.0, 0.5), _row(0.0, 2.0, 1.0, 0.0), _row(0, 1, 1, 1).bool()
    loss, stats = value_loss(values, old, returns, mask)
    # tok 1: V^clip = 0.5 + 0.2 = 0.7; max((1-2)², (0.7-2)²) = 1.69 (clipped larger)
    # tok 2: V^clip = 2.0;             max((2-1)², (2-1)²)   = 1    (equal: not counted as clipped)
    # tok 3: V^clip = 0.5 - 0.2 = 0.3; max((0-0)², (0.3-0)²) = 0.09 (clipped larger)
    assert loss.item() == pytest.approx(0.5 * (1.69 + 1.0 + 0.09) / 3, abs=1e-6)
    assert stats["value_clip_frac"] == pytest.approx(2 / 3)
    assert stats["value_mean"] == pytest.approx((1.0 + 2.0 + 0.0) / 3)
    loss.backward()
    # gradient ½·2(V - R)/3 flows only through the unclipped term, i.e. token 2: (2 - 1)/3
    assert values.grad.tolist()[0] == pytest.approx([0.0, 0.0, 1 / 3, 0.0], abs=1e-6)
    unclipped, _ = value_loss(values, old, returns, mask, clip_eps=None)
    assert unclipped.item() == pytest.approx(0.5 * (1.0 + 1.0 + 0.0) / 3, abs=1e-6)


def test_value_loss_rejects_bad_input():
    z, m = torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="clip_eps=-0.2 must be None or a finite number > 0"):
        value_loss(z, z, z, m, clip_eps=-0.2)
    with pytest.raises(ValueError, match=r"returns\[0, 1\]=inf is not finite"):
        value_loss(z, z, torch.tensor([[0.0, float("inf")]]), m)

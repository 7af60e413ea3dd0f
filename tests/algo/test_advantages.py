"""Turn advantages Â_{i,t}: hand cases, GRPO equivalence, invariances, properties, token broadcast, errors."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from igpo_rlhf.algo import group_normalize, grpo_advantages, token_advantages, turn_advantages


def reference_normalize(values, eps):
    """Slow obvious (r - mean) / (std + eps) with numpy's population std."""
    arr = np.asarray(values, dtype=np.float64)
    return list((arr - arr.mean()) / (arr.std(ddof=0) + eps))


# --- hand-computed cases ------------------------------------------------------------------------------


def test_joint_by_hand():
    # group "q1" pools {1, 3, 5, 7}: mean 4, deviations -3 -1 1 3, var (9+1+1+9)/4 = 5, std √5
    # group "q2" holds one rollout with one value: a pool of one normalises to 0
    s = math.sqrt(5.0)
    adv = turn_advantages([[1.0, 3.0], [5.0, 7.0], [2.0]], ["q1", "q1", "q2"], adv_eps=0.0)
    # γ = 1: Â_{i,1} = r̃_{i,1} + r̃_{i,2},  Â_{i,2} = r̃_{i,2}
    assert adv[0] == pytest.approx([(-3 - 1) / s, -1 / s], abs=1e-12)
    assert adv[1] == pytest.approx([(1 + 3) / s, 3 / s], abs=1e-12)
    assert adv[2] == [0.0]


def test_joint_with_discount_and_default_eps():
    s = math.sqrt(5.0) + 1e-6  # std + eps
    adv = turn_advantages([[1.0, 3.0], [5.0, 7.0]], [0, 0], gamma=0.5)
    # Â_{0,1} = r̃_{0,1} + 0.5 r̃_{0,2} = (-3 + 0.5·(-1)) / s = -3.5 / s
    assert adv[0] == pytest.approx([-3.5 / s, -1 / s], abs=1e-12)
    # Â_{1,1} = (1 + 0.5·3) / s = 2.5 / s
    assert adv[1] == pytest.approx([2.5 / s, 3 / s], abs=1e-12)


def test_separate_by_hand():
    # rollout 0: IG 1, 3, outcome 0;  rollout 1: outcome 0 only;  rollout 2: IG 2, outcome 1
    # IG pool {1, 3, 2}: mean 2, var (1 + 1 + 0)/3 = 2/3  ->  r̃ = -1/a, 1/a, 0 with a = √(2/3)
    # outcome pool {0, 0, 1}: mean 1/3, var (1/9 + 1/9 + 4/9)/3 = 2/9, std √2/3
    #   -> r̃ = (-1/3)/(√2/3) = -1/√2 for rollouts 0 and 1, (2/3)/(√2/3) = √2 for rollout 2
    a = math.sqrt(2 / 3)
    adv = turn_advantages([[1.0, 3.0, 0.0], [0.0], [2.0, 1.0]], ["g"] * 3, norm="separate", adv_eps=0.0)
    o = -1 / math.sqrt(2)
    assert adv[0] == pytest.approx([-1 / a + 1 / a + o, 1 / a + o, o], abs=1e-12)
    assert adv[1] == pytest.approx([o], abs=1e-12)
    assert adv[2] == pytest.approx([0.0 + math.sqrt(2), math.sqrt(2)], abs=1e-12)


def test_ig_coef_scales_the_normalised_ig_terms_by_hand():
    # the separate case above with ig_coef 0.5: IG r̃ = -1/a, 1/a, 0 become -0.5/a, 0.5/a, 0; outcomes unchanged
    a, o = math.sqrt(2 / 3), -1 / math.sqrt(2)
    rewards, groups = [[1.0, 3.0, 0.0], [0.0], [2.0, 1.0]], ["g"] * 3
    adv = turn_advantages(rewards, groups, norm="separate", adv_eps=0.0, ig_coef=0.5)
    assert adv[0] == pytest.approx([-0.5 / a + 0.5 / a + o, 0.5 / a + o, o], abs=1e-12)
    assert adv[1] == pytest.approx([o], abs=1e-12)
    assert adv[2] == pytest.approx([math.sqrt(2), math.sqrt(2)], abs=1e-12)
    # joint: the pool {1, 3, 0} | {0} | {2, 1} is normalised once, then only the IG slots are scaled
    joint = reference_normalize([1.0, 3.0, 0.0, 0.0, 2.0, 1.0], 0.0)
    adv = turn_advantages(rewards, groups, adv_eps=0.0, ig_coef=0.25)
    r0 = [0.25 * joint[0], 0.25 * joint[1], joint[2]]
    assert adv[0] == pytest.approx([sum(r0), sum(r0[1:]), r0[2]], abs=1e-12)
    assert adv[2] == pytest.approx([0.25 * joint[4] + joint[5], joint[5]], abs=1e-12)


@given(
    st.lists(
        st.tuples(
            st.lists(st.floats(-2.0, 2.0, allow_subnormal=False), min_size=1, max_size=5),
            st.integers(0, 2),
        ),
        min_size=1,
        max_size=16,
    )
)
def test_ig_coef_zero_with_separate_norm_is_grpo_whatever_the_ig(rows):
    rewards, groups = zip(*rows, strict=True)
    adv = turn_advantages(list(rewards), groups, norm="separate", ig_coef=0.0)
    grpo = grpo_advantages([row[-1] for row in rewards], groups)
    assert adv == [[g] * len(row) for g, row in zip(grpo, rewards, strict=True)]


def test_joint_differs_from_separate():
    rewards, groups = [[1.0, 3.0, 0.0], [0.0], [2.0, 1.0]], ["g"] * 3
    # joint pools {1,3,0,0,2,1}: mean 7/6 -- a different centring than the separate pools above
    joint = turn_advantages(rewards, groups, adv_eps=0.0)
    expected = reference_normalize([1.0, 3.0, 0.0, 0.0, 2.0, 1.0], 0.0)
    assert joint[1] == pytest.approx([expected[3]], abs=1e-12)
    assert joint[1] != turn_advantages(rewards, groups, norm="separate", adv_eps=0.0)[1]


def test_equal_values_normalise_to_exactly_zero():
    # 0.1 + 0.1 + 0.1 = 0.30000000000000004 in floats, so a float mean would leave a residue
    assert group_normalize([0.1, 0.1, 0.1]) == [0.0, 0.0, 0.0]
    assert group_normalize([5.0]) == [0.0]
    assert group_normalize([]) == []


# --- GRPO equivalence ---------------------------------------------------------------------------------


def test_grpo_by_hand():
    # outcomes 1, 0, 0, 1 in one group: mean 0.5, std 0.5 -> ±0.5 / (0.5 + 1e-6)
    expected = [0.5 / 0.500001, -0.5 / 0.500001, -0.5 / 0.500001, 0.5 / 0.500001]
    assert grpo_advantages([1.0, 0.0, 0.0, 1.0], [7] * 4) == pytest.approx(expected, abs=1e-12)


@given(
    st.lists(
        st.tuples(st.floats(-5.0, 5.0, allow_subnormal=False), st.integers(0, 3)),
        min_size=1,
        max_size=24,
    )
)
def test_igpo_without_ig_equals_grpo_exactly(rows):
    outcomes = [r for r, _ in rows]
    groups = [g for _, g in rows]
    grpo = grpo_advantages(outcomes, groups)
    # the same floats, bit for bit, from both norms
    assert [a[0] for a in turn_advantages([[r] for r in outcomes], groups)] == grpo
    assert [a[0] for a in turn_advantages([[r] for r in outcomes], groups, norm="separate")] == grpo
    # and GRPO's formula, computed independently per group with numpy
    for g in set(groups):
        idx = [i for i, gi in enumerate(groups) if gi == g]
        values = [outcomes[i] for i in idx]
        expected = [0.0] * len(idx) if max(values) == min(values) else reference_normalize(values, 1e-6)
        assert [grpo[i] for i in idx] == pytest.approx(expected, abs=1e-9)


@given(
    st.lists(
        st.tuples(st.floats(-2.0, 2.0, allow_subnormal=False), st.integers(1, 5), st.integers(0, 2)),
        min_size=1,
        max_size=16,
    )
)
def test_zero_ig_with_separate_norm_broadcasts_grpo_to_every_turn(rows):
    # IG rewards all 0 form an all-equal pool -> r̃ = 0, so with γ = 1 every turn gets exactly GRPO's value
    outcomes, turns, groups = zip(*rows, strict=True)
    rewards = [[0.0] * (t - 1) + [r] for r, t in zip(outcomes, turns, strict=True)]
    adv = turn_advantages(rewards, groups, norm="separate")
    grpo = grpo_advantages(outcomes, groups)
    assert adv == [[g] * t for g, t in zip(grpo, turns, strict=True)]


# --- invariances and properties -----------------------------------------------------------------------

reward_lists = st.lists(
    st.lists(st.floats(-3.0, 3.0, allow_subnormal=False), min_size=1, max_size=6), min_size=1, max_size=8
)


@given(reward_lists, st.floats(-10.0, 10.0), st.sampled_from(["joint", "separate"]))
def test_adding_a_constant_to_a_group_changes_nothing(rewards, c, norm):
    groups = [0] * len(rewards)
    shifted = [[r + c for r in row] for row in rewards]
    base = turn_advantages(rewards, groups, norm=norm)
    moved = turn_advantages(shifted, groups, norm=norm)
    for a, b in zip(base, moved, strict=True):
        assert b == pytest.approx(a, abs=1e-5)


@given(reward_lists)
def test_gamma_zero_gives_the_normalised_rewards(rewards):
    adv = turn_advantages(rewards, ["q"] * len(rewards), gamma=0.0)
    flat = [r for row in rewards for r in row]
    expected = [0.0] * len(flat) if max(flat) == min(flat) else reference_normalize(flat, 1e-6)
    assert [a for row in adv for a in row] == pytest.approx(expected, abs=1e-9)


@given(reward_lists)
def test_first_turn_advantages_sum_to_zero_over_a_joint_group(rewards):
    # γ = 1: Â_{i,1} = Σ_t r̃_{i,t}, and the joint r̃ of a group sum to 0
    adv = turn_advantages(rewards, ["q"] * len(rewards))
    assert math.fsum(row[0] for row in adv) == pytest.approx(0.0, abs=1e-6)


@given(reward_lists, st.floats(0.0, 1.0))
def test_discounted_sum_recursion(rewards, gamma):
    # Â_{i,t} = r̃_{i,t} + γ Â_{i,t+1}, with r̃ from the γ = 0 call
    adv = turn_advantages(rewards, [0] * len(rewards), gamma=gamma)
    norm = turn_advantages(rewards, [0] * len(rewards), gamma=0.0)
    for a_row, n_row in zip(adv, norm, strict=True):
        for t in range(len(a_row)):
            later = a_row[t + 1] if t + 1 < len(a_row) else 0.0
            assert a_row[t] == pytest.approx(n_row[t] + gamma * later, abs=1e-9)


def test_groups_are_independent_of_interleaving():
    a = [[0.3, 1.0], [0.0], [0.5, -0.2, 0.0]]
    b = [[1.0], [2.0, 0.0]]
    alone_a, alone_b = turn_advantages(a, ["a"] * 3), turn_advantages(b, ["b"] * 2)
    together = turn_advantages([a[0], b[0], a[1], b[1], a[2]], ["a", "b", "a", "b", "a"])
    assert together == [alone_a[0], alone_b[0], alone_a[1], alone_b[1], alone_a[2]]


# --- token broadcast -----------------------------------------------------------------------------------


def test_token_advantages_by_hand():
    # row 0: prompt 0-1, turn 1 = tokens 2,3, observation 4,5, turn 2 = tokens 6,7
    # row 1: prompt 0-2, turn 1 = tokens 3,4, padding after
    adv, mask = token_advantages([[0.5, -1.0], [2.0]], [[(2, 4), (6, 8)], [(3, 5)]], 8)
    assert adv.dtype == torch.float32 and mask.dtype == torch.bool
    assert adv.tolist() == [[0, 0, 0.5, 0.5, 0, 0, -1, -1], [0, 0, 0, 2, 2, 0, 0, 0]]
    assert mask.tolist() == [
        [bool(x) for x in row] for row in ([0, 0, 1, 1, 0, 0, 1, 1], [0, 0, 0, 1, 1, 0, 0, 0])
    ]


def test_token_advantages_accept_numpy_ints_and_adjacent_turns():
    spans = [[(np.int64(1), np.int64(2)), (2, 3)]]
    adv, mask = token_advantages([[1.0, 3.0]], spans, 4)
    assert adv.tolist() == [[0, 1, 3, 0]] and mask.tolist() == [[False, True, True, False]]


@pytest.mark.parametrize(
    ("advs", "spans", "seq_len", "match"),
    [
        ([[1.0, 2.0]], [[(1, 4), (3, 5)]], 8, r"turn_spans\[0\]\[1\]=\(3, 5\) is invalid: need 4 <= start"),
        ([[1.0]], [[(5, 9)]], 8, r"turn_spans\[0\]\[0\]=\(5, 9\) is invalid.*seq_len=8"),
        ([[1.0]], [[(0, 2)]], 8, "position 0 excluded"),
        ([[1.0]], [[(3, 3)]], 8, r"=\(3, 3\) is invalid"),
        ([[1.0, 2.0]], [[(5, 6), (2, 3)]], 8, r"turn_spans\[0\]\[1\]=\(2, 3\) is invalid"),
        ([[1.0, 2.0]], [[(1, 2)]], 8, "rollout 0 has 2 turn advantages but 1 turn spans"),
        ([[1.0]], [[(1, 2)], [(1, 2)]], 8, "turn_advs has 1 rollouts but turn_spans has 2"),
        ([[float("nan")]], [[(1, 2)]], 8, r"turn_advs\[0\]\[0\]=nan is not finite"),
        ([[1.0]], [[(1.5, 2)]], 8, "must be a \\(start, end\\) pair of ints"),
        ([[1.0]], [[(1, 2)]], 0, "seq_len=0 must be a positive int"),
    ],
)
def test_token_advantages_reject_bad_spans(advs, spans, seq_len, match):
    with pytest.raises(ValueError, match=match):
        token_advantages(advs, spans, seq_len)


# --- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rewards", "groups", "kwargs", "match"),
    [
        ([[1.0]], [0, 1], {}, "turn_rewards has 1 rollouts but group_ids has 2"),
        ([], [], {}, "turn_rewards is empty"),
        ([[1.0], []], [0, 0], {}, r"turn_rewards\[1\]=\[\] must be a non-empty list"),
        ([[1.0, float("nan")]], [0], {}, r"turn_rewards\[0\]\[1\]=nan is not finite"),
        ([[float("inf")]], [0], {}, r"turn_rewards\[0\]\[0\]=inf is not finite"),
        ([1.0], [0], {}, r"turn_rewards\[0\]=1.0 must be a non-empty list"),
        ([[1.0]], [[0]], {}, r"group_ids\[0\]=\[0\] is not hashable"),
        ([[1.0]], [0], {"norm": "sep"}, "norm='sep' is not an option; accepted: 'joint', 'separate'"),
        ([[1.0]], [0], {"gamma": 1.5}, r"gamma=1.5 must be a number in \[0, 1\]"),
        ([[1.0]], [0], {"adv_eps": -1e-6}, "adv_eps=-1e-06 must be a finite number >= 0"),
        ([[1.0]], [0], {"ig_coef": -0.5}, "ig_coef=-0.5 must be a finite number >= 0"),
        ([[1.0]], [0], {"ig_coef": float("nan")}, "ig_coef=nan must be a finite number >= 0"),
    ],
)
def test_turn_advantages_reject_bad_input(rewards, groups, kwargs, match):
    with pytest.raises(ValueError, match=match):
        turn_advantages(rewards, groups, **kwargs)


@pytest.mark.parametrize(
    ("outcomes", "groups", "match"),
    [
        ([1.0, 0.0], [0], "outcomes has 2 values but group_ids has 1"),
        ([], [], "outcomes is empty"),
        ([float("nan")], [0], r"outcomes\[0\]=nan is not finite"),
    ],
)
def test_grpo_advantages_reject_bad_input(outcomes, groups, match):
    with pytest.raises(ValueError, match=match):
        grpo_advantages(outcomes, groups)


@settings(max_examples=30)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), st.integers(0, 3))
def test_token_broadcast_matches_a_slow_loop(turn_counts, gap):
    # lay turns out back to back with `gap` observation tokens between them, then check every position
    spans, advs, seq_len = [], [], 1
    for i, count in enumerate(turn_counts):
        pos, row_spans = 1, []
        for _ in range(count):
            row_spans.append((pos, pos + 2))
            pos += 2 + gap
        spans.append(row_spans)
        advs.append([float(10 * i + t) for t in range(count)])
        seq_len = max(seq_len, pos)
    adv, mask = token_advantages(advs, spans, seq_len)
    for i in range(len(turn_counts)):
        for j in range(seq_len):
            owners = [t for t, (s, e) in enumerate(spans[i]) if s <= j < e]
            assert bool(mask[i, j]) == bool(owners)
            assert float(adv[i, j]) == (advs[i][owners[0]] if owners else 0.0)

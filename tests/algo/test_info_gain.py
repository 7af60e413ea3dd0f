"""IG turn rewards r_{i,t} from beliefs: hand-computed cases, telescoping property, bad input."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from igpo_rlhf.algo import info_gain_rewards


def test_prob_diff_by_hand():
    # beliefs b = 0.2, 0.5, 0.4  ->  r_1 = 0.5 - 0.2 = 0.3,  r_2 = 0.4 - 0.5 = -0.1
    rewards = info_gain_rewards([math.log(0.2), math.log(0.5), math.log(0.4)])
    assert rewards == pytest.approx([0.3, -0.1], abs=1e-12)


def test_log_prob_diff_by_hand():
    # log b = -2, -1.5, -1.75  ->  r_1 = -1.5 - (-2) = 0.5,  r_2 = -1.75 - (-1.5) = -0.25 (exact in binary)
    assert info_gain_rewards([-2.0, -1.5, -1.75], kind="log_prob_diff") == [0.5, -0.25]


def test_prob_diff_is_not_log_prob_diff():
    # log b: -1 -> 0: prob_diff = e^0 - e^-1 = 1 - 0.36787944 = 0.63212056; log diff = 1
    assert info_gain_rewards([-1.0, 0.0]) == pytest.approx([1 - math.exp(-1)], abs=1e-12)
    assert info_gain_rewards([-1.0, 0.0], kind="log_prob_diff") == [1.0]


def test_answer_on_first_turn_has_no_ig_reward():
    assert info_gain_rewards([math.log(0.3)]) == []


@given(st.lists(st.floats(min_value=-30.0, max_value=0.0), min_size=1, max_size=12))
def test_rewards_telescope(log_b):
    # Σ_t (b_t - b_{t-1}) = b_{T-1} - b_0, and likewise for the log values; one reward per non-final turn.
    prob = info_gain_rewards(log_b)
    logs = info_gain_rewards(log_b, kind="log_prob_diff")
    assert len(prob) == len(logs) == len(log_b) - 1
    assert math.fsum(prob) == pytest.approx(math.exp(log_b[-1]) - math.exp(log_b[0]), abs=1e-12)
    assert math.fsum(logs) == pytest.approx(log_b[-1] - log_b[0], abs=1e-9)


@pytest.mark.parametrize(
    ("beliefs", "kind", "match"),
    [
        ([], "prob_diff", "belief_logprobs is empty"),
        ([-1.0, float("nan")], "prob_diff", r"belief_logprobs\[1\]=nan is not finite"),
        ([float("-inf"), -1.0], "prob_diff", r"belief_logprobs\[0\]=-inf is not finite"),
        ([-1.0, 0.5], "prob_diff", r"belief_logprobs\[1\]=0.5 > 0"),
        ([-1.0, "x"], "prob_diff", r"belief_logprobs\[1\]='x' is a string"),
        ([-1.0, -0.5], "diff", "kind='diff' is not an option; accepted: 'prob_diff', 'log_prob_diff'"),
    ],
)
def test_bad_input_is_named(beliefs, kind, match):
    with pytest.raises(ValueError, match=match):
        info_gain_rewards(beliefs, kind=kind)

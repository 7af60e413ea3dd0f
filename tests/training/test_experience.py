"""The controller's reward and advantage assembly against numbers worked out by hand.

Every expected value below is computed from its definition in DESIGN.md with the arithmetic written out
(means, population std, discounted sums), not copied from the code's output.
"""

import math

import pytest
import torch

from igpo_rlhf.config import AlgorithmConfig
from igpo_rlhf.rollout.protocols import Action
from igpo_rlhf.rollout.trajectory import Trajectory
from igpo_rlhf.training.experience import (
    ppo_advantages,
    score_outcomes,
    token_advantage_rows,
    turn_level_advantages,
    turn_rewards,
)

EPS = 1e-6


def traj(group_id, answer, golds, turn_spans, obs_spans, length, prompt_len):
    """A real Trajectory with the given layout (searches on every turn but the last)."""
    n = len(turn_spans)
    actions = [Action("search", ("q",)) for _ in range(n - 1)]
    actions.append(Action("answer", answer=answer) if answer is not None else Action("invalid", error="x"))
    t = Trajectory(
        group_id=group_id,
        sample_id=0,
        question="q?",
        golds=golds,
        meta={},
        token_ids=list(range(1, length + 1)),
        prompt_len=prompt_len,
        turn_spans=turn_spans,
        obs_spans=obs_spans,
        actions=actions,
        answer=answer,
        finish_reason="answer" if answer is not None else "invalid",
    )
    t.validate()
    return t


# A: prompt 0..3, turn 1 = 3..5, obs 5..7, turn 2 = 7..9, obs 9..10, turn 3 = 10..12 (L = 12)
A = traj(0, "Paris", ["Paris"], [(3, 5), (7, 9), (10, 12)], [(5, 7), (9, 10)], 12, 3)
# B: answers on its first turn: prompt 0..4, turn 1 = 4..7 (L = 7)
B = traj(0, "Rome", ["Paris"], [(4, 7)], [], 7, 4)


def test_outcomes_f1_em_and_format_penalty():
    algo = AlgorithmConfig(outcome_metric="f1", format_penalty=-2.0)
    partial = traj(1, "Paris France", ["Paris", "City of Light"], [(2, 4)], [], 4, 2)
    none = traj(1, None, ["Paris"], [(2, 4)], [], 4, 2)
    out = score_outcomes([A, B, partial, none], algo)
    assert [o.reward for o in out[:2]] == [1.0, 0.0]
    # "paris france" vs "paris": precision 1/2, recall 1/1 → F1 = 2·(1/2)·1 / (1/2 + 1) = 2/3
    assert out[2].f1 == pytest.approx(2 * 0.5 * 1 / (0.5 + 1))
    assert out[2].reward == pytest.approx(2 / 3) and out[2].em == 0.0
    assert (out[3].reward, out[3].f1, out[3].em, out[3].answered) == (-2.0, 0.0, 0.0, False)
    em = score_outcomes([partial], AlgorithmConfig(outcome_metric="em"))
    assert em[0].reward == 0.0 and em[0].f1 == pytest.approx(2 / 3)


def test_igpo_turn_rewards_advantages_and_token_broadcast():
    beliefs = [[math.log(0.1), math.log(0.3), math.log(0.6)], [math.log(0.2)]]
    rewards = turn_rewards(beliefs, [1.0, 0.0], [3, 1], estimator="igpo", ig_kind="prob_diff")
    # r_{A,1} = 0.3 - 0.1, r_{A,2} = 0.6 - 0.3, r_{A,3} = outcome 1; B answers at once: [outcome 0]
    assert rewards[0] == pytest.approx([0.2, 0.3, 1.0])
    assert rewards[1] == [0.0]

    advs = turn_level_advantages(rewards, [0, 0], [3, 1], gamma=1.0, norm="joint", adv_eps=EPS)
    pool = [0.2, 0.3, 1.0, 0.0]
    mean = sum(pool) / 4  # 0.375
    std = math.sqrt(sum((r - mean) ** 2 for r in pool) / 4)  # population std
    z = [(r - mean) / (std + EPS) for r in pool]
    expected_a = [z[0] + z[1] + z[2], z[1] + z[2], z[2]]  # Â_t = Σ_{k>=t} r̃_k (γ = 1)
    assert advs[0] == pytest.approx(expected_a, abs=1e-9)
    assert advs[1] == pytest.approx([z[3]], abs=1e-9)

    rows = token_advantage_rows(advs, [A.turn_spans, B.turn_spans], [12, 7])
    assert [r.shape[0] for r in rows] == [12, 7]
    want_a = torch.zeros(12)
    want_a[3:5], want_a[7:9], want_a[10:12] = expected_a[0], expected_a[1], expected_a[2]
    torch.testing.assert_close(rows[0], want_a)
    want_b = torch.zeros(7)
    want_b[4:7] = z[3]
    torch.testing.assert_close(rows[1], want_b)


def test_igpo_log_prob_diff_and_discount_and_separate_norm():
    beliefs = [[math.log(0.1), math.log(0.3), math.log(0.6)], [math.log(0.2)]]
    rewards = turn_rewards(beliefs, [1.0, 0.0], [3, 1], estimator="igpo", ig_kind="log_prob_diff")
    assert rewards[0] == pytest.approx([math.log(3.0), math.log(2.0), 1.0])

    sep = turn_level_advantages(
        [[0.2, 0.3, 1.0], [0.0]], [0, 0], [3, 1], gamma=0.5, norm="separate", adv_eps=EPS
    )
    # IG pool [0.2, 0.3]: mean 0.25, std 0.05; outcome pool [1, 0]: mean 0.5, std 0.5
    ig = [(0.2 - 0.25) / (0.05 + EPS), (0.3 - 0.25) / (0.05 + EPS)]
    oc = [(1.0 - 0.5) / (0.5 + EPS), (0.0 - 0.5) / (0.5 + EPS)]
    a3 = oc[0]
    a2 = ig[1] + 0.5 * a3
    a1 = ig[0] + 0.5 * a2
    assert sep[0] == pytest.approx([a1, a2, a3], abs=1e-9)
    assert sep[1] == pytest.approx([oc[1]], abs=1e-9)


def test_grpo_outcome_advantage_on_every_turn_and_igpo_without_ig_equals_grpo():
    rewards = turn_rewards(None, [1.0, 0.0], [3, 1], estimator="grpo")
    assert rewards == [[1.0], [0.0]]
    advs = turn_level_advantages(rewards, [0, 0], [3, 1], gamma=1.0, norm="joint", adv_eps=EPS)
    a = (1.0 - 0.5) / (0.5 + EPS)
    assert advs == [pytest.approx([a, a, a]), pytest.approx([-a])]
    # IGPO whose beliefs never move (IG = 0 everywhere) is not GRPO under joint norm (zeros join the pool),
    # but with separate norm the all-zero IG pool normalises to 0 and the outcomes to GRPO's advantage.
    flat = [[math.log(0.5)] * 3, [math.log(0.5)]]
    igpo = turn_rewards(flat, [1.0, 0.0], [3, 1], estimator="igpo")
    sep = turn_level_advantages(igpo, [0, 0], [3, 1], gamma=1.0, norm="separate", adv_eps=EPS)
    assert sep == [pytest.approx([a, a, a]), pytest.approx([-a])]


def test_groups_are_normalised_separately():
    rewards = turn_rewards(None, [1.0, 0.0, 0.5, 0.5], [1, 1, 1, 1], estimator="grpo")
    advs = turn_level_advantages(rewards, [0, 0, 1, 1], [1] * 4, gamma=1.0, norm="joint", adv_eps=EPS)
    a = 0.5 / (0.5 + EPS)
    assert [x[0] for x in advs] == pytest.approx([a, -a, 0.0, 0.0])


def test_belief_count_must_match_turns():
    with pytest.raises(ValueError, match="rollout 1 has 2 turns but 1 beliefs"):
        turn_rewards([[-1.0], [-1.0]], [1.0, 0.0], [1, 2], estimator="igpo")
    with pytest.raises(ValueError, match="one belief list per rollout"):
        turn_rewards(None, [1.0], [1], estimator="igpo")
    with pytest.raises(ValueError, match="estimator='ppo'"):
        turn_rewards(None, [1.0], [1], estimator="ppo")


def test_ppo_gae_with_outcome_on_last_action_token():
    mask = torch.tensor([0, 1, 1, 0, 1], dtype=torch.bool)  # actions at j1=1, j2=2, j3=4; 3 is an observation
    values = torch.tensor([0.0, 0.5, 0.2, 9.0, 0.1])
    adv, ret = ppo_advantages([1.0], [values], [mask], gamma=1.0, gae_lambda=0.95)
    # δ3 = r + 0 - V(j3) = 1 - 0.1; δ2 = 0 + V(j3) - V(j2); δ1 = 0 + V(j2) - V(j1)  (observation skipped)
    a3 = 1.0 - 0.1
    a2 = (0.1 - 0.2) + 0.95 * a3
    a1 = (0.2 - 0.5) + 0.95 * a2
    torch.testing.assert_close(adv[0], torch.tensor([0.0, a1, a2, 0.0, a3]))
    torch.testing.assert_close(ret[0], torch.tensor([0.0, a1 + 0.5, a2 + 0.2, 0.0, a3 + 0.1]))
    with pytest.raises(ValueError, match="rollout 0 has no action token"):
        ppo_advantages([1.0], [values], [torch.zeros(5, dtype=torch.bool)], gamma=1.0, gae_lambda=0.95)

"""Trajectory layout: belief points, action mask, invariants, JSON round trip (hand-built examples)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from igpo_rlhf.rollout.protocols import Action
from igpo_rlhf.rollout.trajectory import PromptItem, Trajectory
from tests.rollout.tiny import make_tokenizer

SEARCH = Action(kind="search", queries=("q",))
ANSWER = Action(kind="answer", answer="Paris")


def _traj(**overrides) -> Trajectory:
    # ids:   p p p | t t | o o o | t t | o | t t t
    # index: 0 1 2   3 4   5 6 7   8 9   10  11 12 13
    fields = {
        "group_id": 1,
        "sample_id": 2,
        "question": "q?",
        "golds": ["Paris"],
        "meta": {"source": "test"},
        "token_ids": [10, 11, 12, 20, 21, 30, 31, 32, 22, 23, 33, 24, 25, 26],
        "prompt_len": 3,
        "turn_spans": [(3, 5), (8, 10), (11, 14)],
        "obs_spans": [(5, 8), (10, 11)],
        "actions": [SEARCH, SEARCH, ANSWER],
        "answer": "Paris",
        "finish_reason": "answer",
        "n_searches": 2,
    }
    fields.update(overrides)
    return Trajectory(**fields)


def test_belief_points_and_action_mask():
    t = _traj()
    t.validate()
    assert t.num_turns == 3
    # c_{i,0} ends after the prompt (3), c_{i,1} after obs 1 (8), c_{i,2} after obs 2 (11): T = 3 points.
    assert t.belief_points == [3, 8, 11]
    assert t.action_mask == [0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 1, 1, 1]


def test_single_turn_answer_has_one_belief_point():
    t = _traj(
        token_ids=[1, 2, 3, 4],
        prompt_len=2,
        turn_spans=[(2, 4)],
        obs_spans=[],
        actions=[ANSWER],
        n_searches=0,
    )
    t.validate()
    assert t.belief_points == [2]
    assert t.action_mask == [0, 0, 1, 1]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"prompt_len": 0}, "prompt_len=0"),
        ({"turn_spans": [], "obs_spans": [], "actions": []}, "no turns"),
        ({"obs_spans": [(5, 8)]}, "3 turns need 2 observations"),
        ({"actions": [SEARCH, ANSWER]}, "3 turns but 2 actions"),
        (
            {"turn_spans": [(4, 5), (8, 10), (11, 14)]},
            r"turn 1 span \(4, 5\) must be non-empty and start at 3",
        ),
        ({"turn_spans": [(3, 5), (8, 8), (8, 14)]}, "turn 2 span"),
        ({"obs_spans": [(6, 8), (10, 11)]}, r"observation 1 span \(6, 8\) must start at 5"),
        ({"actions": [ANSWER, SEARCH, ANSWER]}, "turn 1 is followed by an observation but is not a search"),
        ({"turn_spans": [(3, 5), (8, 10), (11, 13)]}, "spans end at 13 but there are 14 token ids"),
        ({"finish_reason": "done"}, "finish_reason='done'"),
        ({"finish_reason": "max_turns"}, "finish_reason='max_turns' with answer='Paris'"),
        ({"answer": None}, "finish_reason='answer' with answer=None"),
    ],
)
def test_validate_names_the_broken_invariant(overrides, message):
    with pytest.raises(ValueError, match=message):
        _traj(**overrides).validate()


def test_json_round_trip_and_segment_texts():
    tok = make_tokenizer()
    prompt, turn, obs, answer = (
        tok.encode(s)
        for s in ("Question: who?", "<search> who </search>", " Doc 1", "<answer> Paris </answer>")
    )
    ids = prompt + turn + obs + answer
    a, b, c = len(prompt), len(prompt) + len(turn), len(prompt) + len(turn) + len(obs)
    t = _traj(
        token_ids=ids,
        prompt_len=a,
        turn_spans=[(a, b), (c, len(ids))],
        obs_spans=[(b, c)],
        actions=[SEARCH, ANSWER],
    )
    t.validate()
    row = json.loads(json.dumps(t.to_json(tok)))
    assert row["prompt_text"] == "Question: who?"
    assert row["turn_texts"] == ["<search> who </search>", "<answer> Paris </answer>"]
    assert row["obs_texts"] == [" Doc 1"]
    assert row["belief_points"] == [a, c]
    back = Trajectory.from_json(row)
    assert dataclasses.asdict(back) == dataclasses.asdict(t)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"question": " ", "golds": ["a"]}, "question=' '"),
        ({"question": "q", "golds": []}, "non-empty list"),
        ({"question": "q", "golds": "a"}, "non-empty list"),
        ({"question": "q", "golds": ["a", ""]}, "non-empty list"),
        ({"question": "q", "golds": ["a"], "meta": []}, "meta"),
    ],
)
def test_prompt_item_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PromptItem(**kwargs)

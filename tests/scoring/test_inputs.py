"""Bad input is a ValueError that names the trajectory (or the argument) and what is accepted."""

import pytest
import torch

from igpo_rlhf.scoring import score_beliefs, score_trajectories
from tests.scoring.tiny_models import VOCAB, tiny_model

PROBE = [7, 8, 9]


@pytest.fixture(scope="module")
def model():
    return tiny_model("qwen2")


def good():
    """Three valid trajectories; each case below breaks one thing, in trajectory 1 where it is per trajectory."""
    return {
        "sequences": [[1, 2, 3, 4], [5, 6, 7, 8, 9, 10], [11, 12]],
        "belief_points": [[2, 4], [1, 3, 6], [2]],
        "probe_ids": PROBE,
        "answers": [[[20, 21]], [[22], [23, 24, 25]], [[26]]],
        "action_masks": [[0, 1, 1, 0], [0, 0, 1, 1, 0, 1], [0, 1]],
    }


def test_the_valid_input_is_accepted(model):
    result = score_trajectories(model, **good())
    assert [len(b) for b in result.beliefs] == [2, 3, 1]


def broken(**changes):
    inputs = good()
    for key, change in changes.items():
        inputs[key] = change(inputs[key])
    return inputs


def replace_1(value):
    """A function that puts `value` in the place of entry 1."""
    return lambda entries: [value if i == 1 else e for i, e in enumerate(entries)]


CASES = {
    "belief point 0": (
        broken(belief_points=replace_1([0, 3])),
        r"belief_points\[1\] holds 0, outside 1\.\.6",
    ),
    "belief point past the end": (
        broken(belief_points=replace_1([7])),
        r"belief_points\[1\] holds 7, outside 1\.\.6",
    ),
    "belief point not an integer": (broken(belief_points=replace_1([2.0])), r"belief_points\[1\] holds 2\.0"),
    "belief point a bool": (broken(belief_points=replace_1([True])), r"belief_points\[1\] holds True"),
    "empty alias": (broken(answers=replace_1([[22], []])), r"answers\[1\]\[1\] is empty"),
    "no alias for belief points": (broken(answers=replace_1([])), r"answers\[1\] has no gold alias"),
    "answers None with belief points": (broken(answers=lambda a: None), r"answers\[0\] has no gold alias"),
    "alias id past the vocabulary": (
        broken(answers=replace_1([[22], [VOCAB]])),
        rf"answers\[1\]\[1\] holds token id {VOCAB} at index 0, outside the model's vocabulary \[0, {VOCAB}\)",
    ),
    "negative token id": (
        broken(sequences=replace_1([5, 6, -1, 8, 9, 10])),
        r"sequences\[1\] holds token id -1",
    ),
    "token id past the vocabulary": (
        broken(sequences=replace_1([5, 6, 7, 8, 9, 10**6])),
        r"sequences\[1\] holds token id 1000000 at index 5",
    ),
    "float token ids": (
        broken(sequences=replace_1([5.0, 6.0])),
        r"sequences\[1\] must be a flat list of integer",
    ),
    "nested token ids": (
        broken(sequences=replace_1([[5, 6], [7, 8]])),
        r"sequences\[1\] must be a flat list",
    ),
    "ragged token ids": (broken(sequences=replace_1([[5, 6], [7]])), r"sequences\[1\] must be a flat list"),
    "empty trajectory": (broken(sequences=replace_1([])), r"sequences\[1\] is empty"),
    "probe id past the vocabulary": (broken(probe_ids=lambda p: [7, VOCAB]), r"probe_ids holds token id 300"),
    "fewer belief point lists": (
        broken(belief_points=lambda b: b[:2]),
        r"belief_points has 2 entries but sequences has 3",
    ),
    "more answers": (broken(answers=lambda a: [*a, [[1]]]), r"answers has 4 entries but sequences has 3"),
    "fewer action masks": (
        broken(action_masks=lambda m: m[:1]),
        r"action_masks has 1 entries but sequences has 3",
    ),
    "action mask of the wrong length": (
        broken(action_masks=replace_1([0, 1])),
        r"action_masks\[1\] has shape \(2,\) but sequences\[1\] has 6 tokens",
    ),
    "action mask not 0/1": (
        broken(action_masks=replace_1([0, 2, 1, 1, 0, 1])),
        r"action_masks\[1\] holds values",
    ),
}


@pytest.mark.parametrize("inputs, message", CASES.values(), ids=CASES.keys())
def test_bad_input_names_the_trajectory(model, inputs, message):
    with pytest.raises(ValueError, match=message):
        score_trajectories(model, **inputs)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"alias_reduce": "mean"}, r"alias_reduce='mean' is not one of \('first', 'max'\)"),
        ({"temperature": 0.0}, r"temperature=0\.0 must be > 0"),
        ({"token_budget": 0}, r"token_budget=0 must be a positive integer"),
        ({"logits_chunk": 2.5}, r"logits_chunk=2\.5 must be a positive integer"),
    ],
)
def test_bad_options_are_named(model, options, message):
    with pytest.raises(ValueError, match=message):
        score_trajectories(model, **good(), **options)


def test_score_beliefs_checks_the_same_way(model):
    inputs = broken(belief_points=replace_1([9]))
    del inputs["action_masks"]
    with pytest.raises(ValueError, match=r"belief_points\[1\] holds 9, outside 1\.\.6"):
        score_beliefs(model, **inputs)


def test_models_whose_attention_ignores_float_masks_are_refused():
    model = tiny_model("llama")
    model.config._attn_implementation = "eager"
    with pytest.raises(ValueError, match=r"attn_implementation='eager'; the scorer needs 'sdpa'"):
        score_beliefs(model, [[1, 2]], [[2]], PROBE, [[[3]]])


def test_sliding_window_models_are_refused():
    model = tiny_model("qwen2")
    model.config.layer_types = ["full_attention", "sliding_attention"]
    with pytest.raises(ValueError, match=r"attention layers \['full_attention', 'sliding_attention'\]"):
        score_beliefs(model, [[1, 2]], [[2]], PROBE, [[[3]]])


def test_integer_tensors_and_numpy_style_points_are_accepted(model):
    beliefs = score_beliefs(
        model,
        [torch.tensor([1, 2, 3], dtype=torch.int32)],
        [[torch.tensor(2), 3]],
        PROBE,
        [[torch.tensor([4, 5])]],
    )
    assert len(beliefs[0]) == 2


def test_a_trajectory_without_belief_points_needs_no_answer(model):
    inputs = good()
    inputs["belief_points"][1] = []
    inputs["answers"][1] = None
    result = score_trajectories(model, **inputs)
    assert result.beliefs[1] == []
    assert [len(b) for b in result.beliefs] == [2, 0, 1]

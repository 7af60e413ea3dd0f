"""Answer extraction and the outcome reward r_{i,T_i}."""

import pytest

from igpo_rlhf.rewards import extract_answer, outcome_reward


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>Paris is the capital.</think>\n<answer> Paris </answer>", "Paris"),
        ("<answer>Lyon</answer> on reflection <answer>Paris</answer>", "Paris"),  # the last pair wins
        ("<answer>\nNew\nYork\n</answer><|im_end|>", "New\nYork"),
        ("I think it is Paris.", None),  # no tag
        ("<answer>Paris", None),  # unclosed
        ("<answer>Lyon</answer><answer>Paris", None),  # the last one unclosed
        ("Paris</answer>", None),  # stray close
        ("<answer><answer>Paris</answer></answer>", None),  # nested
        ("<answer>Paris</answer></answer>", None),  # extra close
        ("<answer>   </answer>", None),  # blank
        ("<answer></answer>", None),  # empty
        ("<Answer>Paris</Answer>", None),  # tags are case-sensitive, as the protocols emit them
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_rejects_non_text():
    with pytest.raises(ValueError, match="text is a list; expected the generated turn as a str"):
        extract_answer(["<answer>x</answer>"])


def test_outcome_reward_metrics():
    golds = "Barack Hussein Obama<|answer_split|>Obama"
    # f1 max over aliases: vs "barack hussein obama": P = 2/2, R = 2/3 -> 0.8; vs "obama": P = 1/2, R = 1 -> 2/3
    assert outcome_reward("Barack Obama", golds) == pytest.approx(0.8)
    assert outcome_reward("Barack Obama", golds, metric="em") == 0.0
    assert outcome_reward("Barack Obama", golds, metric="cover_em") == 1.0  # covers "obama"
    assert outcome_reward("the Obama", golds, metric="em") == 1.0
    assert outcome_reward("the Obama", golds, metric="em", variant="igpo") == 0.0


def test_missing_answer_gets_the_format_penalty():
    assert outcome_reward(None, "Paris") == -2.0
    assert outcome_reward(None, ["Paris"], format_penalty=-1) == -1.0
    assert outcome_reward(extract_answer("<answer>Paris"), "Paris", format_penalty=0.0) == 0.0
    assert outcome_reward(extract_answer("<answer>paris</answer>"), "Paris", format_penalty=-5.0) == 1.0


@pytest.mark.parametrize(
    ("answer", "golds", "kwargs", "match"),
    [
        ("x", "x", {"metric": "rouge"}, "metric='rouge' is not a metric; accepted: 'f1', 'em', 'cover_em'"),
        ("x", "x", {"format_penalty": float("nan")}, "format_penalty=nan must be a finite number"),
        ("x", "x", {"format_penalty": "-2"}, "format_penalty='-2' must be a finite number"),
        (None, "", {}, "holds no non-empty answer"),  # bad golds are an error even without an answer
        ("x", "x", {"variant": "paper"}, "variant='paper' is not a scorer"),
    ],
)
def test_outcome_reward_rejects_bad_input(answer, golds, kwargs, match):
    with pytest.raises(ValueError, match=match):
        outcome_reward(answer, golds, **kwargs)

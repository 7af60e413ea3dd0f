"""Evaluation questions by source on the paper's test parquet (../shared/data), and the validation subset."""

from __future__ import annotations

from pathlib import Path

import pytest

from igpo_rlhf.eval.questions import load_eval_questions, validation_subset
from igpo_rlhf.eval.scores import QUESTION_KEY, SOURCE_KEY

TEST_PARQUET = Path(__file__).resolve().parents[3] / "shared/data/qa/deepresearcher_test.parquet"
needs_data = pytest.mark.skipif(not TEST_PARQUET.is_file(), reason=f"{TEST_PARQUET} is not here")


@needs_data
def test_the_papers_test_set_groups_into_its_seven_sources():
    groups = load_eval_questions([str(TEST_PARQUET)])
    assert {k: len(v) for k, v in groups.items()} == {
        "2wiki": 512,
        "popqa": 512,
        "tq": 512,
        "hotpotqa": 512,
        "nq": 512,
        "musique": 512,
        "Bamboogle": 125,
    }  # fmt: skip  (the data README: 512 per source, Bamboogle 125; 3,197 rows)
    first = groups["nq"][0]
    assert first.meta[SOURCE_KEY] == "nq" and first.meta[QUESTION_KEY] == "nq/0"


@needs_data
def test_source_filter_and_limit_keep_the_first_questions_of_each_source():
    full = load_eval_questions([str(TEST_PARQUET)])
    groups = load_eval_questions([str(TEST_PARQUET)], sources=["Bamboogle", "nq"], limit_per_source=3)
    assert list(groups) == ["Bamboogle", "nq"]
    assert [q.question for q in groups["nq"]] == [q.question for q in full["nq"][:3]]


def test_rows_without_a_data_source_are_grouped_by_file(tmp_path):
    a, b = tmp_path / "set_a.jsonl", tmp_path / "set_b.jsonl"
    a.write_text('{"question": "q1", "answers": ["x"]}\n{"question": "q2", "answers": ["y"]}\n')
    b.write_text('{"question": "q3", "answer": "z"}\n')
    groups = load_eval_questions([str(a), str(b)])
    assert {k: [q.question for q in v] for k, v in groups.items()} == {"set_a": ["q1", "q2"], "set_b": ["q3"]}
    with pytest.raises(ValueError, match=r"unknown source\(s\) 'set_c'; the data holds: set_a, set_b"):
        load_eval_questions([str(a), str(b)], sources=["set_c"])


def test_validation_subset_is_fixed_by_its_seed_and_keeps_order(tmp_path):
    f = tmp_path / "qs.jsonl"
    f.write_text("".join(f'{{"question": "q{k}", "answers": ["a"]}}\n' for k in range(50)))
    items = load_eval_questions([str(f)])["qs"]
    one, again, other = (validation_subset(items, 10, s) for s in (0, 0, 1))
    assert [q.question for q in one] == [q.question for q in again]
    assert [q.question for q in one] != [q.question for q in other]
    positions = [items.index(q) for q in one]
    assert positions == sorted(positions) and len(set(positions)) == 10
    assert validation_subset(items, None, 0) == items and validation_subset(items, 80, 0) == items

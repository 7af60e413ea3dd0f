"""Per-rollout scores, per-source aggregation, the unweighted average, pass@K and the paper's table.

Every expected number below is worked out by hand in the comment beside it."""

from __future__ import annotations

import pytest

from igpo_rlhf.eval.scores import (
    QUESTION_KEY,
    SOURCE_KEY,
    EvalScores,
    SourceScores,
    aggregate,
    score_row,
    score_rows,
    table_markdown,
)
from igpo_rlhf.rollout.protocols import Action
from igpo_rlhf.rollout.trajectory import Trajectory


def traj(answer, golds, *, source="nq", key="nq/0", sample=0, searches=0, turn_len=3, obs_len=5):
    """A trajectory with `searches` search turns (each `turn_len` tokens + an `obs_len`-token observation)
    and a last turn of `turn_len` tokens: 4 prompt tokens."""
    ids = list(range(4))
    turn_spans, obs_spans, actions = [], [], []
    for _ in range(searches):
        turn_spans.append((len(ids), len(ids) + turn_len))
        ids += [7] * turn_len
        obs_spans.append((len(ids), len(ids) + obs_len))
        ids += [8] * obs_len
        actions.append(Action(kind="search", queries=("q",)))
    turn_spans.append((len(ids), len(ids) + turn_len))
    ids += [9] * turn_len
    actions.append(
        Action(kind="answer", answer=answer) if answer is not None else Action(kind="invalid", error="x")
    )
    return Trajectory(
        group_id=0,
        sample_id=sample,
        question="q?",
        golds=list(golds),
        meta={SOURCE_KEY: source, QUESTION_KEY: key},
        token_ids=ids,
        prompt_len=4,
        turn_spans=turn_spans,
        obs_spans=obs_spans,
        actions=actions,
        answer=answer,
        finish_reason="answer" if answer is not None else "invalid",
        n_searches=searches,
    )


@pytest.mark.parametrize(
    "answer, golds, em, f1, f1_igpo, cover",
    [
        # squad drops the article: "eiffel tower" == gold. igpo keeps it: sets {the,eiffel,tower} vs
        # {eiffel,tower}: P 2/3, R 1 -> F1 0.8
        ("The Eiffel Tower", ["Eiffel Tower"], 1.0, 1.0, 0.8, 1.0),
        # "paris france" vs "paris": P 1/2, R 1 -> 2/3 (both scorers); gold covered as a whole word
        ("Paris, France", ["Paris"], 0.0, 2 / 3, 2 / 3, 1.0),
        # second alias matches exactly
        ("wwii", ["World War II", "WWII"], 1.0, 1.0, 1.0, 1.0),
        # yes/no rule: gold "no" != "not now" -> squad F1 0; igpo {not,now} vs {no}: 0; "no" is not a word of it
        ("not now", ["no"], 0.0, 0.0, 0.0, 0.0),
        # squad multiset: [cat,cat,dog] vs [cat,dog]: common 2, P 2/3, R 1 -> 0.8; igpo sets equal -> 1.0
        ("cat cat dog", ["cat dog"], 0.0, 0.8, 1.0, 1.0),
    ],
)
def test_row_metrics_by_hand(answer, golds, em, f1, f1_igpo, cover):
    row = score_row(traj(answer, golds))
    assert (row.em, row.f1_igpo, row.cover_em, row.format_fail) == (em, pytest.approx(f1_igpo), cover, 0.0)
    assert row.f1 == pytest.approx(f1)


def test_no_answer_scores_zero_and_counts_as_format_failure():
    row = score_row(traj(None, ["Paris"], searches=2))
    assert (row.em, row.f1, row.f1_igpo, row.cover_em, row.format_fail) == (0.0, 0.0, 0.0, 0.0, 1.0)


def test_turns_searches_and_response_tokens_come_from_the_spans():
    # 2 searches of 3 generated tokens each + a last turn of 3: 3 turns, 9 response tokens (observations not counted)
    row = score_row(traj("x", ["x"], searches=2, turn_len=3, obs_len=5))
    assert (row.turns, row.searches, row.response_tokens) == (3, 2, 9)


def test_sources_are_averaged_unweighted():
    rows = score_rows(
        [
            traj("Paris", ["Paris"], source="nq", key="nq/0"),  # f1 1
            traj("Paris, France", ["Paris"], source="nq", key="nq/1"),  # f1 2/3
            traj("Rome", ["Paris"], source="popqa", key="popqa/0"),  # f1 0
        ]
    )
    scores = aggregate(rows)
    assert list(scores.sources) == ["nq", "popqa"]
    assert scores.sources["nq"].f1 == pytest.approx((1 + 2 / 3) / 2)  # 5/6
    assert scores.sources["nq"].em == 0.5
    assert scores.sources["popqa"].f1 == 0.0
    # the paper's Avg: mean of the sources (5/6 + 0) / 2 = 5/12, not the mean of the 3 rollouts (5/9)
    assert scores.avg.f1 == pytest.approx(5 / 12)
    assert scores.avg.em == pytest.approx(0.25)
    assert (scores.avg.n, scores.avg.rollouts, scores.sources["nq"].n) == (3, 3, 2)
    assert scores.metrics("eval")["eval/nq/f1"] == pytest.approx(5 / 6)
    assert scores.metrics("eval")["eval/f1"] == pytest.approx(5 / 12)


def test_k_samples_give_avg_at_k_and_pass_at_k():
    rows = score_rows(
        [
            traj("Rome", ["Paris"], key="nq/0", sample=0),  # em 0, f1 0
            traj("Paris", ["Paris"], key="nq/0", sample=1),  # em 1, f1 1
            traj("big cat", ["cat"], key="nq/1", sample=0),  # em 0, f1: P 1/2, R 1 -> 2/3
            traj("dog", ["cat"], key="nq/1", sample=1),  # em 0, f1 0
        ]
    )
    s = aggregate(rows).sources["nq"]
    assert (s.n, s.rollouts, s.samples) == (2, 4, 2)
    assert s.em == 0.25  # avg@2: 1 of 4 rollouts
    assert s.f1 == pytest.approx((0 + 1 + 2 / 3 + 0) / 4)
    assert s.pass_at_k_em == 0.5  # question 0 has an exact match among its 2 samples, question 1 not
    assert s.pass_at_k_f1 == pytest.approx((1 + 2 / 3) / 2)


def test_questions_with_different_sample_counts_are_an_error():
    rows = score_rows([traj("a", ["a"], key="nq/0", sample=0), traj("a", ["a"], key="nq/0", sample=1),
                       traj("a", ["a"], key="nq/1", sample=0)])  # fmt: skip
    with pytest.raises(ValueError, match="different numbers of samples"):
        aggregate(rows)


def test_belief_curve_is_the_mean_per_turn_over_rollouts_reaching_it():
    rows = score_rows(
        [traj("a", ["a"], key="nq/0", searches=1), traj("a", ["a"], key="nq/1")],
        beliefs=[[-2.0, -1.0], [-4.0]],
    )
    curve = aggregate(rows).belief_curves["nq"]
    assert [(p.t, p.n) for p in curve] == [(0, 2), (1, 1)]
    assert curve[0].mean_log_b == -3.0  # (-2 - 4) / 2
    assert curve[0].mean_b == pytest.approx(
        (0.1353352832366127 + 0.01831563888873418) / 2
    )  # (e^-2 + e^-4) / 2
    assert curve[1].mean_log_b == -1.0


def _scores(f1_by_source: dict[str, float], avg_f1: float) -> EvalScores:
    def s(f1):
        return SourceScores(n=1, rollouts=1, samples=1, em=f1 / 2, f1=f1, f1_igpo=f1, cover_em=f1, format_fail=0,
                            turns=1, searches=0, search_errors=0, response_tokens=1)  # fmt: skip

    return EvalScores(sources={k: s(v) for k, v in f1_by_source.items()}, avg=s(avg_f1))


def test_table_has_the_papers_columns_in_the_papers_order():
    # the IGPO paper's headline F1 row; the sources arrive in the parquet's order, not the paper's
    f1 = {"2wiki": 0.721, "popqa": 0.538, "tq": 0.806, "hotpotqa": 0.590, "nq": 0.464, "musique": 0.327,
          "Bamboogle": 0.770}  # fmt: skip
    table = table_markdown(_scores(f1, 0.602), label="Qwen2.5-7B")
    assert table == (
        "| EM | NQ | TQ | HotpotQA | 2Wiki | MuSiQue | Bamboogle | PopQA | Avg |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        "| Qwen2.5-7B | 23.2 | 40.3 | 29.5 | 36.0 | 16.4 | 38.5 | 26.9 | 30.1 |\n"
        "\n"
        "| F1 | NQ | TQ | HotpotQA | 2Wiki | MuSiQue | Bamboogle | PopQA | Avg |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        "| Qwen2.5-7B | 46.4 | 80.6 | 59.0 | 72.1 | 32.7 | 77.0 | 53.8 | 60.2 |\n"
        "\n"
        "Scores in %, greedy; Avg is the unweighted mean over sources.\n"
    )


def test_table_marks_paper_sources_that_were_not_evaluated():
    table = table_markdown(_scores({"hotpotqa": 0.5, "nq": 0.25}, 0.375), label="m")
    assert "| m | 25.0 | – | 50.0 | – | – | – | – | 37.5 |" in table
    assert "Not evaluated: TQ, 2Wiki, MuSiQue, Bamboogle, PopQA (Avg over the 2 evaluated sources)." in table


def test_table_of_other_sources_keeps_their_order():
    table = table_markdown(_scores({"world:test": 0.5, "r1searcher_bamboogle": 0.25}, 0.375), label="m")
    assert "| F1 | world:test | r1searcher_bamboogle | Avg |" in table
    assert "| m | 50.0 | 25.0 | 37.5 |" in table

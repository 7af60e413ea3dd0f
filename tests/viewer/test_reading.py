"""The viewer's reading layer without a server: lazy rollouts index (offsets, token ids cut out, bad lines),
metrics.jsonl, credit recomputation against a slow obvious implementation, list filters, documents."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from igpo_rlhf.rollout.protocols import Action
from igpo_rlhf.rollout.trajectory import Trajectory
from igpo_rlhf.viewer.credit import CreditSettings, RolloutInput, check_stored, group_credit
from igpo_rlhf.viewer.directory import ViewedDirectory, detect_kind
from igpo_rlhf.viewer.listing import ListQuery, list_rows
from igpo_rlhf.viewer.metrics import read_metrics
from igpo_rlhf.viewer.rollouts import RolloutsFile
from igpo_rlhf.viewer.trajectory import reasoning_of, split_documents
from tests.viewer.expected import EPS, slow_credit


def make_row(group: int, sample: int, turns: int, *, answer: str | None, question: str = "Who?") -> dict:
    """A real Trajectory.to_json row (search turns, then an answer or an invalid turn) + the trainer's keys."""
    ids, spans, obs, actions = list(range(100, 105)), [], [], []
    for t in range(turns):
        start = len(ids)
        ids += [7] * (2 + t)
        spans.append((start, len(ids)))
        if t < turns - 1:
            ids += [8] * 3
            obs.append((spans[-1][1], len(ids)))
            actions.append(Action("search", (f"query {t}",)))
        elif answer is None:
            actions.append(Action("invalid", error="no tag"))
        else:
            actions.append(Action("answer", answer=answer))
    traj = Trajectory(group, sample, question, ["Paris"], {"id": f"q{group}"}, ids, 5, spans, obs, actions, answer,
                      "answer" if answer else "invalid", n_searches=turns - 1)  # fmt: skip
    traj.validate()
    row = traj.to_json()
    f1 = 1.0 if answer == "Paris" else 0.0
    beliefs = [-3.0 + 0.5 * t + 0.1 * sample for t in range(turns)]
    row.update(step=1, estimator="igpo", outcome_reward=f1 if answer else -2.0, f1=f1, em=f1, beliefs=beliefs,
               turn_rewards=[math.exp(beliefs[t]) - math.exp(beliefs[t - 1]) for t in range(1, turns)] + [f1],
               turn_advantages=[0.0] * turns)  # fmt: skip
    return row


def write_lines(path: Path, lines: list[str], end: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + end, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- index
def test_index_offsets_and_summaries_match_full_parse(tmp_path):
    rows = [make_row(0, s, turns=1 + s % 3, answer=["Paris", "Rome", None][s % 3]) for s in range(6)]
    rows[2]["question"] = 'has "token_ids": [1, 2] inside]'  # the cut must not touch strings
    path = write_lines(tmp_path / "step_00001.jsonl", [json.dumps(r) for r in rows])
    index = RolloutsFile(path, "1", "step_00001.jsonl", 1).index()
    assert index.problems == []
    assert [s.index for s in index.rows] == list(range(6))
    for s, row in zip(index.rows, rows, strict=True):
        assert s.question == row["question"]
        assert s.tokens == len(row["token_ids"])
        assert s.turns == len(row["turn_spans"])
        assert s.searches == len(row["turn_spans"]) - 1
        assert s.log_beliefs == row["beliefs"]
        assert s.ig == pytest.approx(sum(row["turn_rewards"][:-1]), abs=1e-12)
        assert s.outcome == {"Paris": "correct", "Rome": "wrong", None: "no_answer"}[row["answer"]]
    file = RolloutsFile(path, "1", "step_00001.jsonl", 1)
    for k, row in enumerate(rows):
        assert file.read_row(k) == row  # offsets point at the right lines


def test_bad_lines_are_problems_with_line_numbers(tmp_path):
    good = [json.dumps(make_row(0, s, turns=2, answer="Paris")) for s in range(3)]
    missing = make_row(0, 3, turns=2, answer="Paris")
    del missing["turn_spans"], missing["actions"]
    cut = json.dumps(make_row(0, 4, turns=2, answer="Paris"))
    lines = [
        good[0],
        "this is not json",
        good[1],
        "",
        json.dumps(missing),
        "[1, 2]",
        good[2],
        cut[: len(cut) // 2],
    ]
    path = write_lines(tmp_path / "step_00002.jsonl", lines, end="")
    index = RolloutsFile(path, "2", "rollouts/step_00002.jsonl", 2).index()
    assert [s.index for s in index.rows] == [0, 2, 6]
    by_line = {p.line: p.message for p in index.problems}
    assert sorted(by_line) == [2, 5, 6, 8]
    assert by_line[2].startswith("not a JSON object")
    assert "missing keys turn_spans, actions" in by_line[5]
    assert "not an object" in by_line[6]
    assert by_line[8].startswith("truncated: the file ends mid-row")
    assert {p.file for p in index.problems} == {"rollouts/step_00002.jsonl"}


def test_last_line_without_newline_is_a_row_and_a_growing_file_is_reindexed(tmp_path):
    rows = [json.dumps(make_row(0, s, turns=1, answer="Paris")) for s in range(2)]
    path = write_lines(tmp_path / "rollouts.jsonl", rows, end="")
    file = RolloutsFile(path, "eval", "rollouts.jsonl", None)
    assert len(file.index().rows) == 2 and file.index().problems == []
    with path.open("a", encoding="utf-8") as f:
        f.write("\n" + json.dumps(make_row(1, 0, turns=3, answer=None)) + "\n")
    assert [s.turns for s in file.index().rows] == [1, 1, 3]


def test_missing_row_and_directory_kinds(tmp_path):
    write_lines(
        tmp_path / "run" / "rollouts" / "step_00001.jsonl", [json.dumps(make_row(0, 0, 1, answer=None))]
    )
    view = ViewedDirectory(tmp_path / "run")
    assert view.kind == "run" and list(view.files()) == ["1"]
    with pytest.raises(KeyError, match="has no line 5"):
        view.file("1").read_row(4)
    with pytest.raises(KeyError, match=r"no rollouts file '7'.*steps: 1"):
        view.file("7")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a run directory .* nor an eval directory"):
        detect_kind(tmp_path / "empty")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "scores.json").write_text('{"sources": {}, "avg": {}, "setting": {}}')
    assert detect_kind(tmp_path / "eval") == "eval"


# -------------------------------------------------------------------------------------------- metrics
def test_metrics_last_line_of_a_step_wins_and_bad_lines_are_reported(tmp_path):
    lines = [
        json.dumps({"step": 1, "reward/f1": 0.1, "ig/mean": 0.5}),
        json.dumps({"step": 2, "reward/f1": 0.2}),
        json.dumps({"step": 2, "reward/f1": 0.3, "eval/f1": 0.7}),  # a resumed run logged step 2 again
        '{"reward/f1": 1}',
        '{"step": 3, "reward/f1": NaN}',
        '{"step": 4, "rew',
    ]
    table = read_metrics(write_lines(tmp_path / "metrics.jsonl", lines, end=""))
    assert table.steps == [1, 2, 3]
    assert table.series["reward/f1"] == [0.1, 0.3, None]
    assert table.points("eval/f1") == ([2], [0.7])
    assert table.points("ig/mean") == ([1], [0.5])
    assert table.names == ["eval/f1", "ig/mean", "reward/f1"]
    assert [(p.line, p.message.split(":")[0]) for p in table.problems] == [
        (4, "not a metrics line"),
        (6, "truncated (the file ends mid-line)"),
    ]


# --------------------------------------------------------------------------------------------- credit
@pytest.mark.parametrize(
    ("kind", "norm", "gamma", "ig_coef"),
    [
        ("prob_diff", "joint", 1.0, 1.0),
        ("log_prob_diff", "separate", 0.9, 1.0),
        ("prob_diff", "separate", 1.0, 0.3),
    ],
)
def test_group_credit_equals_the_formulas(kind, norm, gamma, ig_coef):
    rng = random.Random(3)
    beliefs = [[-rng.uniform(0.1, 6.0) for _ in range(rng.randint(1, 4))] for _ in range(6)]
    outcomes = [rng.choice([0.0, 0.5, 1.0, -2.0]) for _ in beliefs]
    settings = CreditSettings(ig_kind=kind, norm=norm, gamma=gamma, ig_coef=ig_coef)
    credit = group_credit(
        [RolloutInput(len(b), o, b) for b, o in zip(beliefs, outcomes, strict=True)], settings
    )
    rewards, normed, adv, grpo = slow_credit(
        beliefs, outcomes, kind=kind, norm=norm, gamma=gamma, ig_coef=ig_coef
    )
    assert credit.note is None
    for c, r, n, a, g in zip(credit.rollouts, rewards, normed, adv, grpo, strict=True):
        assert c.rewards == pytest.approx(r, abs=1e-12)
        assert c.normalized == pytest.approx(n, abs=1e-9)
        assert c.igpo == pytest.approx(a, abs=1e-9)
        assert c.grpo == pytest.approx(g, abs=1e-9)
    stored = [list(a) for a in adv]
    assert check_stored(stored, credit, settings).status == "match"
    stored[2][0] += 1e-3  # a stored advantage off by 1e-3 is caught
    check = check_stored(stored, credit, settings)
    assert check.status == "mismatch" and check.max_abs_diff == pytest.approx(1e-3, rel=1e-3)


def test_group_without_beliefs_gets_grpo_only():
    settings = CreditSettings(estimator="grpo")
    credit = group_credit([RolloutInput(2, 1.0, None), RolloutInput(1, 0.0, None)], settings)
    assert credit.rollouts[0].igpo is None and "no beliefs" in (credit.note or "")
    assert credit.rollouts[0].grpo == pytest.approx([1 / (0.5 + EPS) * 0.5] * 2)
    assert credit.rollouts[1].grpo == pytest.approx([-0.5 / (0.5 + EPS)])
    a = round(0.5 / (0.5 + EPS), 9)  # GRPO's stored advantages as the trainer writes them (± float noise)
    assert check_stored([[a, a], [-a]], credit, settings).status == "match"
    assert check_stored([[a, a], [-1.0]], credit, settings).status == "mismatch"  # off by 2e-6
    assert check_stored([[1.0, 1.0], [-1.0]], credit, CreditSettings(estimator="ppo")).status == "not_checked"


# ------------------------------------------------------------------------------------ list and pages
def test_list_filters_sort_and_pages(tmp_path):
    rows = [make_row(g, s, turns=1 + (g + s) % 3, answer=["Paris", "Lyon", None][(g * 4 + s) % 3],
                     question=f"Question {g} about cities") for g in range(3) for s in range(4)]  # fmt: skip
    path = write_lines(tmp_path / "step_00001.jsonl", [json.dumps(r) for r in rows])
    summaries = RolloutsFile(path, "1", "step_00001.jsonl", 1).index().rows
    page = list_rows(summaries, ListQuery(text="QUESTION 1", outcome="no_answer"))
    assert [s.index for s in page.rows] == [
        k for k, r in enumerate(rows) if r["question"] == "Question 1 about cities" and r["answer"] is None
    ]
    page = list_rows(summaries, ListQuery(turns=3, finish="answer"))
    assert [s.index for s in page.rows] == [
        k for k, r in enumerate(rows) if len(r["turn_spans"]) == 3 and r["answer"] is not None
    ]
    page = list_rows(summaries, ListQuery(sort="ig", descending=True, per_page=5, page=2))
    ig = sorted((sum(r["turn_rewards"][:-1]) for r in rows), reverse=True)
    assert [s.ig for s in page.rows] == pytest.approx(ig[5:10])
    assert (page.total, page.pages, page.facets.outcomes) == (
        12,
        3,
        {"correct": 4, "wrong": 4, "no_answer": 4},
    )
    with pytest.raises(ValueError, match="sort='bogus'; accepted: order, reward, f1, ig"):
        ListQuery(sort="bogus")
    with pytest.raises(ValueError, match="outcome='good'; accepted: correct, partial, wrong, no_answer"):
        ListQuery(outcome="good")


def test_documents_and_reasoning_from_the_templates():
    obs = "\n\n<information>Doc 1(Title: Paris) Paris is the capital.\nDoc 2(Title: Lyon (city)) Lyon is big.\n</information>\n\n"
    docs = split_documents(
        obs, "Doc {rank}(Title: {title}) {text}\n", "\n\n<information>{documents}</information>\n\n"
    )
    assert [(d.rank, d.title, d.text) for d in docs] == [
        ("1", "Paris", "Paris is the capital."),
        ("2", "Lyon (city)", "Lyon is big."),
    ]
    docs = split_documents("[A] one\n[B] two", "[{title}] {text}\n", "{documents}")
    assert [(d.title, d.text) for d in docs] == [("A", "one"), ("B", "two")]
    assert split_documents("free text", "Doc {rank}: {text}\n", "{documents}") == []
    assert reasoning_of("<think> first </think>\n<search> q </search>") == "first"
    assert reasoning_of("plain words <answer> x </answer>") == "plain words"
    assert reasoning_of("<search> q </search>") is None

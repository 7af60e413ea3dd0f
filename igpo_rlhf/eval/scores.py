"""Scoring evaluation trajectories (one row each) and aggregating rows into per-source scores and their average.

    rows = score_rows(trajectories)          # EM / F1 / F1-igpo / cover-EM over gold aliases, format, lengths
    scores = aggregate(rows)                 # per source, and the unweighted mean over sources (the paper's Avg)
    scores.metrics("eval")                   # {"eval/nq/f1": ..., "eval/f1": ...} for metrics.jsonl
    table_markdown(scores, label="Qwen2.5-7B")   # the paper's table row, EM and F1

Metrics per rollout (`igpo_rlhf.rewards`, every one maximised over the gold aliases, 0 without an answer):
`em` and `f1` use SQuAD normalisation (articles and punctuation dropped, F1 over token multisets), `f1_igpo`
the IGPO paper's scorer (token sets, punctuation to spaces; the number to set beside the paper's), `cover_em`
whether a gold alias occurs as whole words in the answer. `format_fail` is 1 for a rollout without a
well-formed answer. A source's score is the mean over its rollouts; with K samples per question that is
avg@K, and `pass_at_k_em` / `pass_at_k_f1` are the mean over questions of the best of their K samples.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from igpo_rlhf.rewards import cover_exact_match, exact_match, f1_score
from igpo_rlhf.rollout.trajectory import Trajectory

SOURCE_KEY = "eval_source"  # PromptItem.meta key naming a question's source (set by load_eval_questions)
QUESTION_KEY = "eval_key"  # PromptItem.meta key identifying a question across its samples

# The IGPO paper's table: column name and the data_source names that fill it (lower-cased), in its order.
PAPER_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("NQ", ("nq",)),
    ("TQ", ("tq", "triviaqa")),
    ("HotpotQA", ("hotpotqa",)),
    ("2Wiki", ("2wiki", "2wikimultihopqa")),
    ("MuSiQue", ("musique",)),
    ("Bamboogle", ("bamboogle",)),
    ("PopQA", ("popqa",)),
)
MEAN_KEYS = ("em", "f1", "f1_igpo", "cover_em", "format_fail", "turns", "searches", "search_errors",
             "response_tokens")  # fmt: skip


def source_of(meta: dict[str, Any]) -> str:
    """A question's source: the `eval_source` tag, else the row's `data_source`, else its file's stem."""
    for key in (SOURCE_KEY, "data_source"):
        if isinstance(meta.get(key), str) and meta[key]:
            return meta[key]
    if isinstance(meta.get("source"), str) and meta["source"]:
        return Path(meta["source"]).stem
    return "unknown"


@dataclass
class EvalRow:
    """The scores of one rollout (one question, one sample)."""

    source: str
    question: str  # identifies the question across its samples (the `eval_key` tag, else the text)
    sample: int
    em: float
    f1: float
    f1_igpo: float
    cover_em: float
    format_fail: float  # 1.0: no well-formed answer
    turns: int
    searches: int
    search_errors: int  # searches answered with an error observation (the proxy failed)
    response_tokens: int  # tokens the policy generated, over all turns
    beliefs: list[float] | None = None  # log b_{i,t} at t = 0..T-1 (with --beliefs)

    def metrics(self) -> dict[str, float]:
        """The per-rollout fields of a rollouts.jsonl row."""
        return {k: getattr(self, k) for k in ("em", "f1", "f1_igpo", "cover_em", "format_fail")}


def score_row(traj: Trajectory, beliefs: list[float] | None = None) -> EvalRow:
    """One trajectory's row: answer metrics over its gold aliases, format failure, turns, searches, tokens."""
    answer = traj.answer

    def metric(fn, **kw) -> float:
        return 0.0 if answer is None else float(fn(answer, traj.golds, **kw))

    return EvalRow(
        source=source_of(traj.meta),
        question=str(traj.meta.get(QUESTION_KEY, traj.question)),
        sample=traj.sample_id,
        em=metric(exact_match),
        f1=metric(f1_score),
        f1_igpo=metric(f1_score, variant="igpo"),
        cover_em=metric(cover_exact_match),
        format_fail=float(answer is None),
        turns=traj.num_turns,
        searches=traj.n_searches,
        search_errors=traj.n_search_errors,
        response_tokens=sum(end - start for start, end in traj.turn_spans),
        beliefs=beliefs,
    )


def score_rows(
    trajectories: Sequence[Trajectory], beliefs: Sequence[list[float]] | None = None
) -> list[EvalRow]:
    """`score_row` of every trajectory (`beliefs[i]`: trajectory i's log b per belief point, optional)."""
    if beliefs is not None and len(beliefs) != len(trajectories):
        raise ValueError(f"beliefs has {len(beliefs)} entries for {len(trajectories)} trajectories")
    return [score_row(t, None if beliefs is None else beliefs[i]) for i, t in enumerate(trajectories)]


# ------------------------------------------------------------------------------------------- aggregate
@dataclass
class SourceScores:
    """Scores of one source (or their average): fractions in [0, 1] and means per rollout."""

    n: int  # questions (Avg: all sources' questions together)
    rollouts: int
    samples: int  # K: rollouts per question
    em: float
    f1: float
    f1_igpo: float
    cover_em: float
    format_fail: float
    turns: float
    searches: float
    search_errors: float
    response_tokens: float
    pass_at_k_em: float | None = None  # with K > 1: share of questions with an exact match among K samples
    pass_at_k_f1: float | None = None  # with K > 1: mean over questions of the best F1 among K samples

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class BeliefPoint:
    """Mean belief at turn t (the context c_t: prompt, then after each observation) over the rollouts that
    reach it."""

    t: int
    mean_log_b: float
    mean_b: float
    n: int


@dataclass
class EvalScores:
    """Per-source scores in first-seen order, their unweighted mean, and (with beliefs) the belief curves."""

    sources: dict[str, SourceScores]
    avg: SourceScores
    belief_curves: dict[str, list[BeliefPoint]] | None = None  # per source and "all" (pooled)

    def to_json(self, setting: dict[str, Any] | None = None) -> dict[str, Any]:
        """The scores.json layout: {"sources": {...}, "avg": {...}, ["beliefs": {...}], "setting": {...}}."""
        out: dict[str, Any] = {
            "sources": {name: s.to_json() for name, s in self.sources.items()},
            "avg": self.avg.to_json(),
        }
        if self.belief_curves is not None:
            out["beliefs"] = {name: [asdict(p) for p in curve] for name, curve in self.belief_curves.items()}
        if setting is not None:
            out["setting"] = setting
        return out

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        """Flat scalars for metrics.jsonl / TensorBoard: `{prefix}/{source}/{em,f1,...}` and `{prefix}/{em,...}`."""
        out: dict[str, float] = {}
        keys = ("em", "f1", "f1_igpo", "cover_em", "format_fail", "turns", "searches")
        for name, s in self.sources.items():
            out |= {f"{prefix}/{name}/{k}": float(getattr(s, k)) for k in keys}
        out |= {f"{prefix}/{k}": float(getattr(self.avg, k)) for k in keys}
        return out


def _source_scores(rows: list[EvalRow]) -> SourceScores:
    by_question: dict[str, list[EvalRow]] = {}
    for r in rows:
        by_question.setdefault(r.question, []).append(r)
    ks = {len(v) for v in by_question.values()}
    if len(ks) != 1:
        raise ValueError(
            f"source {rows[0].source!r}: questions have different numbers of samples {sorted(ks)}; "
            "every question needs the same K"
        )
    k = ks.pop()
    means = {key: statistics.fmean(getattr(r, key) for r in rows) for key in MEAN_KEYS}
    passes = {}
    if k > 1:
        passes = {
            "pass_at_k_em": statistics.fmean(max(r.em for r in v) for v in by_question.values()),
            "pass_at_k_f1": statistics.fmean(max(r.f1 for r in v) for v in by_question.values()),
        }
    return SourceScores(n=len(by_question), rollouts=len(rows), samples=k, **means, **passes)


def _average(per_source: list[SourceScores]) -> SourceScores:
    """The unweighted mean over sources of every score (n and rollouts: totals)."""
    samples = {s.samples for s in per_source}
    mean = {key: statistics.fmean(getattr(s, key) for s in per_source) for key in MEAN_KEYS}
    passes = {}
    if per_source[0].pass_at_k_em is not None:
        passes = {
            key: statistics.fmean(getattr(s, key) for s in per_source)
            for key in ("pass_at_k_em", "pass_at_k_f1")
        }
    return SourceScores(
        n=sum(s.n for s in per_source),
        rollouts=sum(s.rollouts for s in per_source),
        samples=samples.pop() if len(samples) == 1 else 0,
        **mean,
        **passes,
    )


def belief_curve(rows: Iterable[EvalRow]) -> list[BeliefPoint]:
    """Mean log b_t and mean b_t = exp(log b_t) at each turn t over the rows that have a belief at t."""
    at: dict[int, list[float]] = {}
    for r in rows:
        for t, log_b in enumerate(r.beliefs or []):
            at.setdefault(t, []).append(log_b)
    return [
        BeliefPoint(
            t=t, mean_log_b=statistics.fmean(v), mean_b=statistics.fmean(math.exp(x) for x in v), n=len(v)
        )
        for t, v in sorted(at.items())
    ]


def aggregate(rows: Sequence[EvalRow]) -> EvalScores:
    """Rows → per-source scores (sources in first-seen order) and their unweighted mean (the paper's Avg)."""
    if not rows:
        raise ValueError("no rows to aggregate: the evaluation produced no rollouts")
    groups: dict[str, list[EvalRow]] = {}
    for r in rows:
        groups.setdefault(r.source, []).append(r)
    sources = {name: _source_scores(group) for name, group in groups.items()}
    curves = None
    if any(r.beliefs is not None for r in rows):
        curves = {name: belief_curve(group) for name, group in groups.items()} | {"all": belief_curve(rows)}
    return EvalScores(sources=sources, avg=_average(list(sources.values())), belief_curves=curves)


# ---------------------------------------------------------------------------------------------- table
def paper_column(source: str) -> str | None:
    """The paper's column for a source name (case-insensitive), or None."""
    for column, names in PAPER_COLUMNS:
        if source.lower() in names:
            return column
    return None


def table_markdown(scores: EvalScores, *, label: str) -> str:
    """Two Markdown tables (EM, F1), each one row: the paper's seven sources in its order, then Avg, in %.

    With none of the paper's sources, the columns are the evaluated sources in their order. A paper source
    that was not evaluated shows "–", and the Avg is then over the evaluated sources only (said below)."""
    paper = {paper_column(name): name for name in scores.sources if paper_column(name) is not None}
    extra = [name for name in scores.sources if paper_column(name) is None]
    columns: list[tuple[str, str | None]] = []
    if paper:
        columns = [(column, paper.get(column)) for column, _ in PAPER_COLUMNS]
    columns += [(name, name) for name in extra]
    missing = [column for column, source in columns if source is None]
    lines = []
    for metric, title in (("em", "EM"), ("f1", "F1")):
        header = "| " + " | ".join([title, *(c for c, _ in columns), "Avg"]) + " |"
        rule = "|" + "|".join(["---"] + ["---:"] * (len(columns) + 1)) + "|"
        cells = [
            "–" if source is None else f"{100 * getattr(scores.sources[source], metric):.1f}"
            for _, source in columns
        ]
        row = "| " + " | ".join([label, *cells, f"{100 * getattr(scores.avg, metric):.1f}"]) + " |"
        lines += [header, rule, row, ""]
    k = scores.avg.samples
    notes = [f"Scores in %, {'greedy' if k == 1 else f'avg@{k}'}; Avg is the unweighted mean over sources."]
    if missing:
        notes.append(
            f"Not evaluated: {', '.join(missing)} (Avg over the {len(scores.sources)} evaluated sources)."
        )
    return "\n".join(lines + notes) + "\n"

"""Rollouts files, indexed lazily: one `RolloutsFile` per `rollouts/step_XXXXX.jsonl` of a run (or the
`rollouts.jsonl` of an eval directory), each row a `Trajectory.to_json` dict plus the trainer's keys.

Nothing is read when a directory is opened. A file is indexed the first time it is listed: one pass over
its lines records each line's byte offset and a `RowSummary` (what the trajectory list filters and sorts
on). The token ids -- most of a row -- are cut out of the line before it is parsed (their number is where
the last turn span ends), so indexing costs the JSON of the texts only. A whole row is parsed when one trajectory is shown, by seeking to its offset.

Bad lines do not stop anything: a line that is not JSON, a cut last line and a row missing keys each
become a `Problem` naming the file and line, reported on the page; the other rows stay listed.
"""

from __future__ import annotations

import json
import math
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What a row needs to be listed and shown (Trajectory.to_json); everything else is optional.
REQUIRED_KEYS = ("question", "golds", "turn_spans", "obs_spans", "actions", "answer", "finish_reason")
OUTCOMES = ("correct", "partial", "wrong", "no_answer")

_TOKEN_IDS = re.compile(rb'"token_ids"\s*:\s*\[')


@dataclass(frozen=True)
class Problem:
    """Something wrong in a file of the viewed directory, shown on the page instead of crashing it."""

    file: str  # path relative to the viewed directory
    line: int | None  # 1-based line number; None: the file as a whole
    message: str


@dataclass
class RowSummary:
    """What the trajectory list shows, filters and sorts on; one per good row of a rollouts file."""

    part: str  # the file's key: the step number of a run ("12"), or "eval"
    index: int  # 0-based line number in the file: (part, index) names the trajectory
    step: int | None
    group: (
        str | None
    )  # the group's key: the row's group_id; "CHUNK-GROUP_ID" in an eval (ids restart per chunk)
    group_id: int | None
    sample_id: int | None
    source: str | None  # eval rows: the dataset source
    question: str
    golds: list[str]
    answer: str | None
    finish_reason: str
    outcome: str  # one of OUTCOMES (from em / f1 / answer)
    turns: int
    searches: int
    tokens: int  # len(token_ids)
    reward: float | None  # the outcome reward r_{i,T_i} as stored (training rows)
    f1: float | None
    em: float | None
    ig: float | None  # Σ_t r_{i,t} over the non-final turns (IG rewards as stored, or from the beliefs)
    log_beliefs: list[float] | None = field(default=None, repr=False)  # [log b_{i,0..T-1}]


@dataclass
class FileIndex:
    """The result of one pass over a rollouts file."""

    line_offsets: list[int]  # byte offset of every line (good or bad), by 0-based line number
    rows: list[RowSummary]  # good rows, in file order
    problems: list[Problem]
    size: int  # bytes indexed (the file may grow while a run or an eval is writing it)
    mtime_ns: int


def finite_or_none(value: Any) -> float | None:
    """A JSON number as a finite float; None for null, NaN/inf and anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def missing_keys(row: dict[str, Any]) -> list[str]:
    return [k for k in REQUIRED_KEYS if k not in row]


def row_identity(row: dict[str, Any]) -> dict[str, Any]:
    """The fields a list row and a trajectory page both show as stored: ids, source, question, golds, finish."""
    return {
        "group_id": row.get("group_id") if isinstance(row.get("group_id"), int) else None,
        "sample_id": row.get("sample_id") if isinstance(row.get("sample_id"), int) else None,
        "source": str(row["source"]) if row.get("source") is not None else None,
        "question": str(row["question"]),
        "golds": [str(g) for g in row["golds"]] if isinstance(row["golds"], list) else [str(row["golds"])],
        "finish_reason": str(row["finish_reason"]),
    }


def outcome_of(answer: str | None, em: float | None, f1: float | None) -> str:
    """correct (EM 1), partial (F1 > 0), wrong (answered, F1 0) or no_answer (no well-formed answer)."""
    if answer is None:
        return "no_answer"
    if em is not None and em >= 1.0:
        return "correct"
    if f1 is not None and f1 > 0.0:
        return "partial"
    return "wrong"


def ig_total(row: dict[str, Any], ig_kind: str = "prob_diff") -> float | None:
    """Σ of the IG rewards r_{i,1..T-1}: the stored `turn_rewards` of an igpo row without its outcome;
    otherwise from the stored beliefs: the sum telescopes to b_{T-1} - b_0 (prob_diff) or
    log b_{T-1} - log b_0 (log_prob_diff)."""
    rewards = row.get("turn_rewards")
    if row.get("estimator") == "igpo" and isinstance(rewards, list) and len(rewards) >= 1:
        values = [finite_or_none(r) for r in rewards[:-1]]
        return None if None in values else float(sum(values))  # type: ignore[arg-type]
    beliefs = row.get("beliefs")
    if isinstance(beliefs, list) and beliefs:
        first, last = finite_or_none(beliefs[0]), finite_or_none(beliefs[-1])
        if first is not None and last is not None:
            return last - first if ig_kind == "log_prob_diff" else math.exp(last) - math.exp(first)
    return None


def group_key(row: dict[str, Any]) -> str | None:
    """Rows with the same key are the n rollouts of one prompt: `group_id` within a run's step file; within an
    eval's single file `chunk-group_id` (group ids count prompts within a chunk)."""
    gid = row.get("group_id")
    if not isinstance(gid, int) or isinstance(gid, bool):
        return None
    chunk = row.get("chunk")
    return f"{chunk}-{gid}" if isinstance(chunk, int) and not isinstance(chunk, bool) else str(gid)


def summarize(
    row: dict[str, Any], part: str, index: int, step: int | None, tokens: int, ig_kind: str = "prob_diff"
) -> RowSummary:
    """The list entry of a parsed row (with its required keys; see `missing_keys`)."""
    answer = row["answer"] if isinstance(row["answer"], str) else None
    f1, em = finite_or_none(row.get("f1")), finite_or_none(row.get("em"))
    actions = row["actions"]
    searches = row.get("n_searches")
    if not isinstance(searches, int):
        searches = sum(1 for a in actions if isinstance(a, dict) and a.get("kind") == "search")
    beliefs = row.get("beliefs")
    log_beliefs = [float(b) for b in beliefs] if isinstance(beliefs, list) else None
    row_step = row.get("step")
    return RowSummary(
        part=part,
        index=index,
        step=row_step if isinstance(row_step, int) else step,
        group=group_key(row),
        **row_identity(row),
        answer=answer,
        outcome=outcome_of(answer, em, f1),
        turns=len(row["turn_spans"]),
        searches=searches,
        tokens=tokens,
        reward=finite_or_none(row.get("outcome_reward")),
        f1=f1,
        em=em,
        ig=ig_total(row, ig_kind),
        log_beliefs=log_beliefs,
    )


def _without_token_ids(line: bytes) -> tuple[bytes, bool]:
    """The line with its token id array emptied (True), or the line as it is (False: no array found)."""
    m = _TOKEN_IDS.search(line)
    end = line.find(b"]", m.end()) if m is not None else -1
    if end < 0:
        return line, False
    return line[: m.end()] + line[end:], True


def _token_count(row: dict[str, Any], cut: bool) -> int:
    """len(token_ids): the end of the last turn span (the spans tile the ids; Trajectory.validate)."""
    if not cut:
        return len(row["token_ids"]) if isinstance(row.get("token_ids"), list) else 0
    spans = row.get("turn_spans")
    try:
        return int(spans[-1][1])
    except (TypeError, IndexError, ValueError):
        return 0


def _parse_line(line: bytes) -> tuple[dict[str, Any] | None, int, str | None]:
    """(row, number of token ids, error): the row parsed without its token ids when that is safe."""
    light, cut = _without_token_ids(line)
    try:
        row = json.loads(light)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        if not cut:
            return None, 0, str(err)
        try:  # the cut went wrong somewhere (an odd layout): parse the whole line
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err2:
            return None, 0, str(err2)
        cut = False
    if not isinstance(row, dict):
        return None, 0, f"a JSON {type(row).__name__}, not an object"
    return row, _token_count(row, cut), None


class RolloutsFile:
    """One JSON-lines file of trajectories, indexed on first use and re-indexed when it changes."""

    def __init__(
        self, path: Path, key: str, label: str, step: int | None, ig_kind: str = "prob_diff"
    ) -> None:
        self.path = path
        self.key = key  # "12" (a run's step 12) or "eval"
        self.label = label  # the path shown in problems, relative to the viewed directory
        self.step = step
        self.ig_kind = ig_kind  # algorithm.ig_kind, for the IG total of rows without stored IG rewards
        self._index: FileIndex | None = None
        self._lock = threading.Lock()

    def index(self) -> FileIndex:
        """The file's index; built on first call, rebuilt when the file's size or mtime changed."""
        with self._lock:
            try:
                st = self.path.stat()
            except OSError as err:
                return FileIndex([], [], [Problem(self.label, None, f"cannot read: {err.strerror}")], 0, 0)
            if self._index is None or (st.st_size, st.st_mtime_ns) != (
                self._index.size,
                self._index.mtime_ns,
            ):
                self._index = self._build(st.st_size, st.st_mtime_ns)
            return self._index

    def _build(self, size: int, mtime_ns: int) -> FileIndex:
        offsets: list[int] = []
        rows: list[RowSummary] = []
        problems: list[Problem] = []
        offset = 0
        with self.path.open("rb") as f:
            for number, line in enumerate(f):
                offsets.append(offset)
                offset += len(line)
                if not line.strip():
                    continue
                row, n_tokens, error = _parse_line(line)
                if error is not None:
                    if not line.endswith(b"\n") and offset >= size:
                        error = (
                            f"truncated: the file ends mid-row ({len(line)} bytes without a closing newline; "
                            f"{error})"
                        )
                    else:
                        error = f"not a JSON object: {error}"
                    problems.append(Problem(self.label, number + 1, error))
                    continue
                assert row is not None
                missing = missing_keys(row)
                if missing:
                    problems.append(
                        Problem(
                            self.label,
                            number + 1,
                            f"row missing keys {', '.join(missing)} (a trajectory row needs "
                            f"{', '.join(REQUIRED_KEYS)})",
                        )
                    )
                    continue
                try:
                    rows.append(summarize(row, self.key, number, self.step, n_tokens, self.ig_kind))
                except (TypeError, ValueError, AttributeError) as err:
                    problems.append(
                        Problem(self.label, number + 1, f"row has a value of the wrong type: {err}")
                    )
        return FileIndex(offsets, rows, problems, size, mtime_ns)

    def read_row(self, index: int) -> dict[str, Any]:
        """The whole row at 0-based line `index`; KeyError if there is none, ValueError if it is bad."""
        offsets = self.index().line_offsets
        if not 0 <= index < len(offsets):
            raise KeyError(f"{self.label} has no line {index + 1} (it has {len(offsets)})")
        with self.path.open("rb") as f:
            f.seek(offsets[index])
            line = f.readline()
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{self.label} line {index + 1}: not a JSON object: {err}") from err
        if not isinstance(row, dict):
            raise ValueError(f"{self.label} line {index + 1}: not a JSON object")
        missing = missing_keys(row)
        if missing:
            raise ValueError(f"{self.label} line {index + 1}: row missing keys {', '.join(missing)}")
        return row

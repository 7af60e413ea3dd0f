"""A run's `metrics.jsonl` as aligned series, for the overview charts and `igpo plot`.

One JSON object per step (`{"step": 3, "reward/f1": 0.41, ...}`). Metrics logged only on some steps
(held-out `eval/f1` every few steps) are None elsewhere. A step logged twice (a resumed run) keeps its last
line. Bad lines become problems, not errors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from igpo_rlhf.viewer.rollouts import Problem, finite_or_none


@dataclass
class MetricsTable:
    """Every metric of a run over its steps: `series[name][k]` is the value at `steps[k]` (or None)."""

    steps: list[int] = field(default_factory=list)
    series: dict[str, list[float | None]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """Metric names that have at least one value, sorted."""
        return sorted(name for name, values in self.series.items() if any(v is not None for v in values))

    def points(self, name: str) -> tuple[list[int], list[float]]:
        """(steps, values) where `name` has a value."""
        values = self.series.get(name) or [None] * len(self.steps)
        pairs = [(s, v) for s, v in zip(self.steps, values, strict=True) if v is not None]
        return [s for s, _ in pairs], [v for _, v in pairs]


def read_metrics(path: Path, label: str = "metrics.jsonl") -> MetricsTable:
    """Read a metrics.jsonl file; a missing file is an empty table with a problem saying so."""
    if not path.is_file():
        return MetricsTable(problems=[Problem(label, None, "no such file: the run has logged no step yet")])
    by_step: dict[int, dict[str, float | None]] = {}
    problems: list[Problem] = []
    with path.open("rb") as f:
        lines = f.read().split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            cut = number == len(lines)  # the last piece has no newline after it: a line being written
            what = "truncated (the file ends mid-line)" if cut else "not a JSON object"
            problems.append(Problem(label, number, f"{what}: {err}"))
            continue
        step = row.get("step") if isinstance(row, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            problems.append(Problem(label, number, "not a metrics line: no integer 'step'"))
            continue
        by_step[step] = {k: finite_or_none(v) for k, v in row.items() if k != "step"}
    steps = sorted(by_step)
    names = sorted({k for values in by_step.values() for k in values})
    series = {name: [by_step[s].get(name) for s in steps] for name in names}
    return MetricsTable(steps, series, problems)

"""Evaluation questions grouped by source, and the fixed validation subset the trainer uses.

A question's source is its row's `data_source` (the DeepResearcher / Search-R1 parquet files: nq, tq, popqa,
hotpotqa, 2wiki, musique, Bamboogle), else the data entry: the file's stem (`r1searcher_bamboogle`) or the
world split (`world:test`). Every question is tagged in its meta with its source (`eval_source`) and a key
that names it across samples and reruns (`eval_key` = "source/index within the source").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from igpo_rlhf.eval.scores import QUESTION_KEY, SOURCE_KEY
from igpo_rlhf.rollout.trajectory import PromptItem

if TYPE_CHECKING:
    from igpo_rlhf.config import WorldConfig


def entry_source(entry: str) -> str:
    """The source name of a data entry whose rows carry no data_source: the world split or the file stem."""
    return entry if entry.startswith("world:") else Path(entry).stem


def load_eval_questions(
    entries: Sequence[str],
    *,
    format: str = "auto",
    world: WorldConfig | None = None,
    sources: Sequence[str] | None = None,
    limit_per_source: int | None = None,
) -> dict[str, list[PromptItem]]:
    """source → its questions (file order), tagged with `eval_source` / `eval_key`.

    `sources`: keep only these (ValueError naming an unknown one and the available ones). `limit_per_source`:
    the first N of each source. A bad row or a row without gold answers is a ValueError naming file and row
    (`igpo_rlhf.data.datasets.load_questions`)."""
    from igpo_rlhf.data.datasets import load_questions

    if isinstance(entries, str) or not entries:
        raise ValueError(f"data={entries!r}: give a list of one or more dataset files (or world:test)")
    if limit_per_source is not None and (not isinstance(limit_per_source, int) or limit_per_source < 1):
        raise ValueError(f"limit_per_source={limit_per_source!r}: expected a positive int")
    groups: dict[str, list[PromptItem]] = {}
    for entry in entries:
        for item in load_questions([entry], format=format, world=world):
            ds = item.meta.get("data_source")
            name = ds if isinstance(ds, str) and ds else entry_source(entry)
            groups.setdefault(name, []).append(item)
    if sources is not None:
        unknown = [s for s in sources if s not in groups]
        if unknown:
            raise ValueError(
                f"unknown source(s) {', '.join(map(repr, unknown))}; the data holds: {', '.join(groups)}"
            )
        groups = {name: groups[name] for name in sources}
    out = {}
    for name, items in groups.items():
        kept = items[:limit_per_source] if limit_per_source is not None else items
        out[name] = [
            replace(item, meta={**item.meta, SOURCE_KEY: name, QUESTION_KEY: f"{name}/{k}"})
            for k, item in enumerate(kept)
        ]
    return out


def validation_subset(questions: Sequence[PromptItem], size: int | None, seed: int) -> list[PromptItem]:
    """A fixed subset of `size` questions drawn without replacement with `seed` (all when size is None or
    at least their number), kept in their original order: the same questions at every validation."""
    if size is None or size >= len(questions):
        return list(questions)
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"eval.subset_size={size!r}: expected a positive int or null")
    picked = np.random.default_rng(seed).choice(len(questions), size=size, replace=False)
    return [questions[i] for i in sorted(picked.tolist())]

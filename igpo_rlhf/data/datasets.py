"""Question datasets: read QA files into PromptItems, and a resumable, seeded prompt sampler.

Formats (`data.format`, or `auto`: detected per file from its extension and columns / keys):

- `deepresearcher`: verl parquet rows as in GAIR-NLP/DeepResearcher (`../shared/data/qa/deepresearcher_*`):
  `prompt` = a list of chat messages whose last user message holds the question, `reward_model.
  ground_truth` = the gold aliases joined by `<|answer_split|>` (or a list of them), `data_source`,
  `extra_info.index`.
- `search_r1`: Search-R1 / FlashRAG rows, parquet or jsonl. Either raw FlashRAG rows
  (`question`, `golden_answers`: list, optional `id`) or Search-R1's processed verl rows (`prompt`,
  `reward_model.ground_truth.target`: list, `data_source`).
- `r1searcher`: RUCAIBox/R1-Searcher jsonl: `{"idx", "question", "answer"}`, answer a string or a list.
- `jsonl`: ours, one JSON object per line:

      {"id": "q1", "question": "Who founded Brimvale Foundry?", "answers": ["Talmor Vesk", "T. Vesk"]}

  `answers` is a non-empty list of aliases (a single string is one alias); every other key is kept in
  `PromptItem.meta`.
- `world:train`, `world:test`: the built-in world's splits (ours format), from `data.world.dir`; the world
  is rendered there first when missing (`igpo_rlhf.world.world`).

When a verl row's prompt is a whole instruction template ("... Question: <q>\\n", as Search-R1 writes
them), the question is the text after its last "Question:"; the template comes from our config instead.
A bad row (no question, no gold answer, a wrong type) or an unreadable file is a ValueError naming the file,
the row number (0-based) and what was expected.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from igpo_rlhf.rewards import split_golds
from igpo_rlhf.rollout.trajectory import PromptItem

if TYPE_CHECKING:
    from igpo_rlhf.config import WorldConfig

FORMATS = ("auto", "deepresearcher", "search_r1", "r1searcher", "jsonl")
WORLD_SPLITS = {"world:train": "train.jsonl", "world:test": "test.jsonl"}
_TEMPLATE_CUES = ("<answer>", "<search>", "<think>", "<tool_call>")


class _BadRow(ValueError):
    """A row that does not fit its format; re-raised with the file and row number."""


# ----------------------------------------------------------------------------------------- reading
def _read_rows(path: Path) -> list[dict]:
    """The file's rows as dicts (parquet via pyarrow; jsonl one object per line)."""
    if not path.is_file():
        raise ValueError(f"dataset file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except (OSError, pa.ArrowException) as exc:
            raise ValueError(f"dataset file {path} is not a readable parquet file: {exc}") from None
    if suffix in (".jsonl", ".json"):
        rows = []
        with open(path, encoding="utf-8") as f:
            for k, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path} line {k + 1}: not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path} line {k + 1}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
        return rows
    raise ValueError(f"dataset file {path}: unknown extension {suffix!r}; accepted: .parquet, .jsonl, .json")


def detect_format(path: Path, rows: list[dict]) -> str:
    """The format of a file from its first row's keys (see the module docstring)."""
    if not rows:
        raise ValueError(f"dataset file {path} holds no rows")
    keys = set(rows[0])
    if {"prompt", "reward_model"} <= keys:
        gt = (
            rows[0]["reward_model"].get("ground_truth") if isinstance(rows[0]["reward_model"], dict) else None
        )
        return "search_r1" if isinstance(gt, dict) else "deepresearcher"
    if {"question", "golden_answers"} <= keys:
        return "search_r1"
    if {"question", "answers"} <= keys:
        return "jsonl"
    if {"question", "answer"} <= keys:
        return "r1searcher"
    raise ValueError(
        f"dataset file {path}: cannot tell its format from the keys {sorted(keys)}; expected verl rows "
        "(prompt, reward_model), FlashRAG rows (question, golden_answers), ours (question, answers) or "
        "R1-Searcher rows (question, answer); or set data.format"
    )


def question_from_prompt(content: str) -> str:
    """The question inside a verl prompt: the text after the last "Question:" when the content is an
    instruction template (it mentions the protocol's tags), else the content itself."""
    head, sep, tail = content.rpartition("Question:")
    if sep and any(cue in head for cue in _TEMPLATE_CUES):
        return tail.strip()
    return content.strip()


def _as_list(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


def _prompt_question(row: dict) -> str:
    messages = _as_list(row.get("prompt"))
    if not isinstance(messages, list) or not messages:
        raise _BadRow(f"'prompt' is {messages!r}; expected a non-empty list of chat messages")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1].get("content"), str):
        raise _BadRow(f"'prompt' holds no user message with string content: {messages!r}")
    return question_from_prompt(users[-1]["content"])


def _golds(value: Any, key: str) -> list[str]:
    value = _as_list(value)
    if value is None:
        raise _BadRow(f"no {key!r}; expected the gold answer(s): a string or a list of strings")
    try:
        return split_golds(value)
    except ValueError as exc:
        raise _BadRow(f"{key!r}: {exc}") from None


def _question(row: dict, key: str = "question") -> str:
    q = row.get(key)
    if not isinstance(q, str) or not q.strip():
        raise _BadRow(f"{key!r} is {q!r}; expected a non-empty string")
    return q.strip()


def _row_item(fmt: str, row: dict, meta: dict) -> PromptItem:
    """One row of format `fmt` → PromptItem (raises _BadRow on a bad row)."""
    if fmt == "deepresearcher":
        rm = row.get("reward_model")
        if not isinstance(rm, dict):
            raise _BadRow(f"'reward_model' is {rm!r}; expected a dict with 'ground_truth'")
        extra = row.get("extra_info") if isinstance(row.get("extra_info"), dict) else {}
        meta |= {"data_source": row.get("data_source"), "id": extra.get("index")}
        return PromptItem(
            _prompt_question(row), _golds(rm.get("ground_truth"), "reward_model.ground_truth"), meta
        )
    if fmt == "search_r1":
        if "prompt" in row:
            rm = row.get("reward_model")
            gt = rm.get("ground_truth") if isinstance(rm, dict) else None
            if not isinstance(gt, dict):
                raise _BadRow(f"'reward_model' is {rm!r}; expected {{'ground_truth': {{'target': [...]}}}}")
            extra = row.get("extra_info") if isinstance(row.get("extra_info"), dict) else {}
            meta |= {"data_source": row.get("data_source"), "id": extra.get("index")}
            return PromptItem(
                _prompt_question(row), _golds(gt.get("target"), "reward_model.ground_truth.target"), meta
            )
        meta |= {"data_source": row.get("data_source"), "id": row.get("id")}
        return PromptItem(_question(row), _golds(row.get("golden_answers"), "golden_answers"), meta)
    if fmt == "r1searcher":
        meta |= {"id": row.get("idx")}
        return PromptItem(_question(row), _golds(row.get("answer"), "answer"), meta)
    if fmt == "jsonl":
        extra = {k: v for k, v in row.items() if k not in ("question", "answers")}
        return PromptItem(_question(row), _golds(row.get("answers"), "answers"), meta | extra)
    raise ValueError(f"format={fmt!r} is unknown; accepted: {', '.join(FORMATS)}")


def read_file(path: str | Path, format: str = "auto") -> list[PromptItem]:
    """Every row of one dataset file as a PromptItem (meta: source file, row number, id, data_source)."""
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is unknown; accepted: {', '.join(FORMATS)}")
    path = Path(path)
    rows = _read_rows(path)
    fmt = detect_format(path, rows) if format == "auto" else format
    items = []
    for k, row in enumerate(rows):
        try:
            items.append(_row_item(fmt, row, {"source": str(path), "row": k}))
        except _BadRow as exc:
            raise ValueError(f"{path} row {k} ({fmt} format): {exc}") from None
    return items


def load_questions(
    paths: Sequence[str],
    *,
    format: str = "auto",
    max_samples: int | None = None,
    world_dir: str | Path | None = None,
    world: WorldConfig | None = None,
) -> list[PromptItem]:
    """The questions of every file in order, the first `max_samples` of them when given.

    `world:train` / `world:test` read the world in `world_dir` (default `world.dir`); with `world` given, a
    missing world, or one built with other settings, is rendered there first."""
    if isinstance(paths, str):
        raise ValueError(f"paths={paths!r} is a string; expected a list of dataset files")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
        raise ValueError(f"max_samples={max_samples!r}: expected a positive int or None")
    items: list[PromptItem] = []
    for entry in paths:
        if entry.startswith("world:"):
            items += read_file(_world_split(entry, world_dir, world), "jsonl")
        else:
            items += read_file(entry, format)
        if max_samples is not None and len(items) >= max_samples:
            return items[:max_samples]
    return items


def _world_split(entry: str, world_dir: str | Path | None, world: WorldConfig | None) -> Path:
    from igpo_rlhf.world.world import build_world, world_is_built

    if entry not in WORLD_SPLITS:
        raise ValueError(f"dataset {entry!r} is not a world split; accepted: {', '.join(WORLD_SPLITS)}")
    if world_dir is None and world is None:
        raise ValueError(f"dataset {entry!r} needs world_dir (or the world settings) to find the world")
    directory = Path(world_dir if world_dir is not None else world.dir)
    if world is not None and not world_is_built(directory, world):
        build_world(directory, world)
    path = directory / WORLD_SPLITS[entry]
    if not path.is_file():
        raise ValueError(f"{path} does not exist; render the world first: igpo build-world {directory}")
    return path


# ----------------------------------------------------------------------------------------- sampler
class PromptSampler:
    """Batches of prompts in a seeded order, epoch after epoch; `state_dict()` resumes it exactly.

    The order within an epoch is OpenRLHF's `DistributedSampler` with one replica (a permutation seeded
    by seed + epoch), reused for its `consumed_samples` resume; a batch that runs past the end of an epoch
    continues with the next epoch's order."""

    def __init__(self, items: Sequence[PromptItem], batch_size: int, seed: int, shuffle: bool = True) -> None:
        from openrlhf.utils.distributed_sampler import DistributedSampler

        if len(items) == 0:
            raise ValueError("PromptSampler needs at least one prompt; the dataset is empty")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected an int >= 1")
        self.items = list(items)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0  # prompts of the current epoch already handed out
        self._sampler = DistributedSampler(self.items, num_replicas=1, rank=0, shuffle=shuffle, seed=seed)
        self._rest: list[int] | None = None  # indices left in the current epoch

    def _remaining(self) -> list[int]:
        if self._rest is None:
            self._sampler.set_epoch(self.epoch, consumed_samples=self.position)
            self._rest = list(iter(self._sampler))
        return self._rest

    def next_batch(self) -> list[PromptItem]:
        """The next `batch_size` prompts."""
        batch: list[int] = []
        while len(batch) < self.batch_size:
            rest = self._remaining()
            take = rest[: self.batch_size - len(batch)]
            batch += take
            self._rest = rest[len(take) :]
            self.position += len(take)
            if not self._rest:
                self.epoch, self.position, self._rest = self.epoch + 1, 0, None
        return [self.items[i] for i in batch]

    def state_dict(self) -> dict[str, int | bool]:
        """Where the sampler is: epoch and position, plus what must match on resume."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "shuffle": self.shuffle,
                "num_items": len(self.items), "batch_size": self.batch_size}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()` output; the dataset, seed and shuffle must be the same."""
        for key, mine in (("seed", self.seed), ("shuffle", self.shuffle), ("num_items", len(self.items))):
            if state.get(key) != mine:
                raise ValueError(
                    f"sampler state has {key}={state.get(key)!r} but this sampler has {key}={mine!r}; "
                    "resume with the same dataset, seed and shuffle setting"
                )
        epoch, position = state.get("epoch"), state.get("position")
        if not (
            isinstance(epoch, int)
            and epoch >= 0
            and isinstance(position, int)
            and 0 <= position < len(self.items)
        ):
            raise ValueError(
                f"sampler state epoch={epoch!r}, position={position!r}: expected ints, epoch >= 0 and "
                f"0 <= position < {len(self.items)}"
            )
        self.epoch, self.position, self._rest = epoch, position, None

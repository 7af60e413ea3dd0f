"""The directory `igpo view` opens: a training run or an eval directory, read-only.

    run    metrics.jsonl, config.yaml, rollouts/step_XXXXX.jsonl (one file per step)
    eval   scores.json ({"sources": {SOURCE: {...}}, "avg": {...}, "setting": {...}}), rollouts.jsonl, table.md

Opening reads nothing but the directory listing and the small files (config.yaml, scores.json); rollouts
files are indexed when first listed (rollouts.py), metrics.jsonl is re-read when it changes, the
tokenizer (config.yaml model.path) loads in the background. Nothing is ever written here.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from igpo_rlhf.viewer.credit import CreditSettings
from igpo_rlhf.viewer.metrics import MetricsTable, read_metrics
from igpo_rlhf.viewer.rollouts import Problem, RolloutsFile

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_STEP_FILE = re.compile(r"step_(\d+)\.jsonl")
EVAL_KEY = "eval"


@dataclass
class EvalScores:
    """scores.json of an eval directory (and table.md when present)."""

    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    avg: dict[str, Any] = field(default_factory=dict)
    setting: dict[str, Any] = field(default_factory=dict)
    beliefs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # per source: mean b_t by turn t
    table_md: str | None = None


def detect_kind(path: Path) -> Literal["run", "eval"]:
    """ "run" or "eval"; ValueError naming the path and what a run or an eval directory holds."""
    if not path.is_dir():
        raise ValueError(
            f"{path}: not a directory; give a run directory (metrics.jsonl, config.yaml, rollouts/) or an eval "
            "directory (scores.json, rollouts.jsonl)"
        )
    if (path / "scores.json").is_file() or (path / "rollouts.jsonl").is_file():
        return "eval"
    if any((path / name).exists() for name in ("metrics.jsonl", "config.yaml", "rollouts")):
        return "run"
    raise ValueError(
        f"{path}: neither a run directory (metrics.jsonl, config.yaml, rollouts/step_XXXXX.jsonl) nor an eval "
        "directory (scores.json, rollouts.jsonl)"
    )


def _read_mapping(path: Path, label: str, problems: list[Problem], loader) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = loader(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
        problems.append(Problem(label, None, f"cannot be read: {err}"))
        return None
    if not isinstance(data, dict):
        problems.append(Problem(label, None, f"expected a mapping at the top, got {type(data).__name__}"))
        return None
    return data


class ViewedDirectory:
    """A run or eval directory; every read is lazy and every file is opened read-only."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        self.kind = detect_kind(self.path)
        self.problems: list[Problem] = []
        self.config = _read_mapping(self.path / "config.yaml", "config.yaml", self.problems, yaml.safe_load)
        raw_scores = _read_mapping(self.path / "scores.json", "scores.json", self.problems, json.loads)
        self.scores = self._scores(raw_scores) if self.kind == "eval" else None
        algorithm = (self.config or {}).get("algorithm")
        if algorithm is None and self.scores is not None:
            algorithm = self.scores.setting.get("algorithm")
        self.settings = CreditSettings.from_section(algorithm if isinstance(algorithm, dict) else None)
        self._files: dict[str, RolloutsFile] = {}
        self._metrics: tuple[tuple[int, int], MetricsTable] | None = None
        self._tokenizer_lock = threading.Lock()
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._tokenizer_status: str | None = None

    @property
    def name(self) -> str:
        return self.path.name

    # -------------------------------------------------------------------------------- rollouts files
    def files(self) -> dict[str, RolloutsFile]:
        """The rollouts files by key, in step order (re-listed on every call: a live run adds steps)."""
        found: list[tuple[str, Path, int | None]] = []
        if self.kind == "eval":
            if (self.path / "rollouts.jsonl").is_file():
                found.append((EVAL_KEY, self.path / "rollouts.jsonl", None))
        elif (self.path / "rollouts").is_dir():
            for p in (self.path / "rollouts").iterdir():
                m = _STEP_FILE.fullmatch(p.name)
                if m:
                    found.append((str(int(m.group(1))), p, int(m.group(1))))
            found.sort(key=lambda item: item[2] or 0)
        out = {}
        for key, path, step in found:
            if key not in self._files:
                label = str(path.relative_to(self.path))
                self._files[key] = RolloutsFile(path, key, label, step, self.settings.ig_kind)
            out[key] = self._files[key]
        return out

    def file(self, key: str) -> RolloutsFile:
        """The rollouts file `key`; KeyError naming the keys there are."""
        files = self.files()
        if key not in files:
            what = "steps" if self.kind == "run" else "parts"
            raise KeyError(f"no rollouts file {key!r} in {self.path}; {what}: {', '.join(files) or 'none'}")
        return files[key]

    # ------------------------------------------------------------------------------------- metrics
    def metrics(self) -> MetricsTable:
        """metrics.jsonl, re-read when its size or mtime changed."""
        path = self.path / "metrics.jsonl"
        try:
            st = path.stat()
            stamp = (st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = (-1, -1)
        if self._metrics is None or self._metrics[0] != stamp:
            self._metrics = (stamp, read_metrics(path))
        return self._metrics[1]

    # ------------------------------------------------------------------------------------ tokenizer
    def model_path(self) -> str | None:
        """model.path of the run (config.yaml), or the eval setting's model path."""
        model = (self.config or {}).get("model")
        if model is None and self.scores is not None:
            model = self.scores.setting.get("model")
        if isinstance(model, dict):
            model = model.get("path")
        return model if isinstance(model, str) and model else None

    def tokenizer(self) -> tuple[PreTrainedTokenizerBase | None, str]:
        """(the run's tokenizer or None, a sentence saying which, or why not). Loaded once."""
        with self._tokenizer_lock:
            if self._tokenizer_status is None:
                self._tokenizer, self._tokenizer_status = self._load_tokenizer()
            return self._tokenizer, self._tokenizer_status

    def preload_tokenizer(self) -> None:
        """Load the tokenizer in a background thread, so the first token view does not wait for it."""
        threading.Thread(target=self.tokenizer, name="igpo-view-tokenizer", daemon=True).start()

    def _load_tokenizer(self) -> tuple[PreTrainedTokenizerBase | None, str]:
        model = self.model_path()
        if model is None:
            return None, "no model.path in the directory's config: showing the stored segment texts"
        candidates = [Path(model)] if Path(model).is_absolute() else [Path(model), self.path / model]
        for candidate in candidates:
            if (candidate / "config.json").is_file():
                from igpo_rlhf.models.loading import load_tokenizer

                try:
                    return load_tokenizer(candidate), f"tokens decoded with the tokenizer of {candidate}"
                except (OSError, ValueError) as err:
                    return None, f"the tokenizer of {candidate} does not load ({err}): showing segment texts"
        return None, f"model.path {model!r} is not on this machine: showing the stored segment texts"

    # ------------------------------------------------------------------------------------- scores
    def _scores(self, raw: dict[str, Any] | None) -> EvalScores:
        scores = EvalScores()
        if raw is not None:
            for key in ("sources", "avg", "setting", "beliefs"):
                value = raw.get(key, {})
                if isinstance(value, dict):
                    setattr(scores, key, value)
                else:
                    self.problems.append(Problem("scores.json", None, f"{key!r} is not a mapping"))
        table = self.path / "table.md"
        if table.is_file():
            scores.table_md = table.read_text(encoding="utf-8", errors="replace")
        return scores

"""Atomic, rotated checkpoints of a run: `run_dir/checkpoints/step_XXXXX/`.

A checkpoint directory holds
    policy/            DeepSpeed checkpoint of the policy (weights, optimizer, scheduler) + per-rank RNG
    critic/            the same for the critic (estimator=ppo)
    trainer_state.pt   step, prompt-sampler position, the driver's RNG states (python, numpy, torch),
                       the seeds the actors derive their per-step sampling seeds from
    config.yaml        the resolved config of the run
It is written into `checkpoints/.tmp-step_XXXXX/`, every file fsync'ed, then renamed into place in one
`os.rename`: a run killed at any moment leaves either the complete checkpoint or none. The latest
checkpoint is the `step_*` directory with the highest step; older ones beyond `keep_last` are deleted
(except the last good one a collapse rollback would return to).

`checkpoints/best/` holds the policy with the best held-out F1 so far as a Hugging Face directory
(`best.json`: its step and scores), written by the trainer whenever validation finds a new best.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

_STEP_DIR = re.compile(r"^step_(\d+)$")
TMP_PREFIX = ".tmp-"


def step_dir_name(step: int) -> str:
    return f"step_{step:05d}"


def capture_rng() -> dict[str, Any]:
    """This process's RNG states (python, numpy, torch, and CUDA when present)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def check_run_dir(run_dir: str | Path, *, resume: bool) -> None:
    """A run directory holding checkpoints is continued only with --resume (ValueError saying what to do)."""
    root = Path(run_dir) / "checkpoints"
    if not resume and CheckpointManager(run_dir, keep_last=1).latest() is not None:
        raise ValueError(
            f"{root} already holds checkpoints; pass --resume to continue that run, --overwrite to start over, "
            "or choose another logging.run_dir"
        )


def _fsync_tree(root: Path) -> None:
    """fsync every file, then every directory (children before parents), under root."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class CheckpointManager:
    """Checkpoints of one run directory."""

    def __init__(self, run_dir: str | Path, keep_last: int) -> None:
        if keep_last < 1:
            raise ValueError(f"checkpoint.keep_last={keep_last!r} must be >= 1")
        self.root = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, ascending."""
        if not self.root.is_dir():
            return []
        found = (_STEP_DIR.match(p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def latest(self) -> tuple[int, Path] | None:
        """(step, directory) of the newest complete checkpoint, or None."""
        steps = self.steps()
        return (steps[-1], self.root / step_dir_name(steps[-1])) if steps else None

    def begin(self, step: int) -> Path:
        """A fresh temporary directory to write the checkpoint of `step` into (a leftover one is removed)."""
        tmp = self.root / (TMP_PREFIX + step_dir_name(step))
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, tmp: Path, step: int, keep: frozenset[int] = frozenset()) -> Path:
        """fsync `tmp`, rename it to `step_XXXXX` atomically, delete checkpoints beyond keep_last (except the
        steps in `keep`: the last good checkpoint a collapse rollback returns to)."""
        final = self.root / step_dir_name(step)
        if final.exists():  # a checkpoint of this step from an earlier attempt of the same run
            shutil.rmtree(final)
        _fsync_tree(tmp)
        os.rename(tmp, final)
        _fsync_dir(self.root)
        for old in self.steps()[: -self.keep_last]:
            if old not in keep:
                shutil.rmtree(self.root / step_dir_name(old))
        return final


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_trainer_state(directory: Path, state: dict[str, Any]) -> None:
    torch.save(state, directory / "trainer_state.pt")


def load_trainer_state(directory: Path) -> dict[str, Any]:
    path = directory / "trainer_state.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {directory} is not a complete checkpoint")
    return torch.load(path, weights_only=False)

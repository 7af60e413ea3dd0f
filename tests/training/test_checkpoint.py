"""Atomic, rotated checkpoints: a crash while writing leaves the previous checkpoint as the latest."""

import random

import numpy as np
import pytest
import torch

from igpo_rlhf.training.checkpoint import (
    CheckpointManager,
    capture_rng,
    load_trainer_state,
    restore_rng,
    save_trainer_state,
)


def write(manager: CheckpointManager, step: int) -> None:
    tmp = manager.begin(step)
    (tmp / "policy").mkdir()
    (tmp / "policy" / "weights.bin").write_bytes(bytes([step]) * 16)
    save_trainer_state(tmp, {"step": step})
    manager.commit(tmp, step)


def test_commit_rotates_and_latest_is_the_newest(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    assert manager.latest() is None
    for step in (1, 2, 3):
        write(manager, step)
    assert manager.steps() == [2, 3]
    step, directory = manager.latest()
    assert step == 3 and directory.name == "step_00003"
    assert load_trainer_state(directory) == {"step": 3}
    assert (directory / "policy" / "weights.bin").read_bytes() == bytes([3]) * 16


def test_an_interrupted_write_is_invisible_and_cleaned_up(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    write(manager, 1)
    tmp = manager.begin(2)  # the run dies while writing step 2: files are there, the rename never happened
    (tmp / "half.bin").write_bytes(b"x")
    assert manager.latest()[0] == 1
    assert manager.steps() == [1]
    again = manager.begin(2)  # the resumed run writes step 2 again into a clean directory
    assert list(again.iterdir()) == []
    save_trainer_state(again, {"step": 2})
    manager.commit(again, 2)
    assert manager.steps() == [1, 2] and not tmp.exists()


def test_incomplete_directory_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="trainer_state.pt is missing"):
        load_trainer_state(tmp_path)
    with pytest.raises(ValueError, match="keep_last=0"):
        CheckpointManager(tmp_path, keep_last=0)


def test_rng_states_round_trip():
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    state = capture_rng()
    first = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    restore_rng(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == first

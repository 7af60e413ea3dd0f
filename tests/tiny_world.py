"""The tiny world and the tiny warm-started Qwen2 that the end-to-end and eval tests share (built with
`igpo make-tiny-model`, no downloads, ~30 s). The session fixtures `tiny` and `proxy` (tests/conftest.py)
build them once per test session."""

from __future__ import annotations

from pathlib import Path

from igpo_rlhf.world.tiny_model import main as make_tiny_model

WORLD = {"seed": 3, "n_people": 16, "n_train": 6, "n_test": 12, "n_demos": 60, "max_hops": 2}
TINY_MODEL = ["--vocab-size", "700", "--hidden-size", "64", "--layers", "2", "--heads", "2", "--kv-heads", "1",
              "--intermediate-size", "128", "--steps", "80", "--batch-size", "8", "--lr", "0.006"]  # fmt: skip


def world_overrides(world_dir: Path) -> list[str]:
    """`--set` overrides that point a config at the tiny world."""
    return [f"data.world.{k}={v}" for k, v in WORLD.items()] + [f"data.world.dir={world_dir}"]


def build_tiny(root: Path) -> tuple[Path, Path]:
    """(world_dir, model_dir) under `root`: the world rendered and the tiny model warm-started on its demos."""
    world_dir, model_dir = root / "world", root / "model"
    sets = [a for s in world_overrides(world_dir) for a in ("--set", s)]
    assert make_tiny_model([str(model_dir), *TINY_MODEL, *sets]) == 0
    return world_dir, model_dir

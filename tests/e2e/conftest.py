"""Real components for the end-to-end tests: a tiny world and a tiny warm-started Qwen2 built here with
`igpo make-tiny-model` (no downloads, ~30 s), the real search proxy on loopback serving the world's
corpus, and one local Ray per test module. Everything tiny: 2 prompts x 4 rollouts, 2 steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from igpo_rlhf.config import Config, load_config
from igpo_rlhf.world.tiny_model import main as make_tiny_model
from services.search_proxy.launch import start_proxy

ROOT = Path(__file__).resolve().parents[2]

WORLD = {"seed": 3, "n_people": 16, "n_train": 6, "n_test": 12, "n_demos": 60, "max_hops": 2}
TINY_MODEL = ["--vocab-size", "700", "--hidden-size", "64", "--layers", "2", "--heads", "2", "--kv-heads", "1",
              "--intermediate-size", "128", "--steps", "80", "--batch-size", "8", "--lr", "0.006"]  # fmt: skip


def world_overrides(world_dir: Path) -> list[str]:
    return [f"data.world.{k}={v}" for k, v in WORLD.items()] + [f"data.world.dir={world_dir}"]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(world_dir, model_dir): the world rendered and the tiny model warm-started on its demonstrations."""
    root = tmp_path_factory.mktemp("e2e-tiny")
    world_dir, model_dir = root / "world", root / "model"
    sets = [a for s in world_overrides(world_dir) for a in ("--set", s)]
    assert make_tiny_model([str(model_dir), *TINY_MODEL, *sets]) == 0
    return world_dir, model_dir


@pytest.fixture(scope="session")
def proxy(tiny, tmp_path_factory):
    """The real search proxy (BM25 over the world's corpus) in its own process on 127.0.0.1."""
    world_dir, _ = tiny
    cfg = load_config(None, [f"search.proxy.corpus={world_dir / 'corpus.jsonl'}", 'search.proxy.cache.mode="off"',
                             f"search.proxy.cache.dir={tmp_path_factory.mktemp('search-cache')}"])  # fmt: skip
    with start_proxy(cfg.search.proxy, port=0) as running:
        yield running


def e2e_config(tiny: tuple[Path, Path], run_dir: Path, *overrides: str) -> Config:
    """The tiny run: 2 prompts x 4 rollouts, up to 3 turns, 2 steps, a checkpoint every step."""
    world_dir, model_dir = tiny
    return load_config(
        None,
        [
            f"model.path={model_dir}",
            *world_overrides(world_dir),
            "data.train=[world:train]",
            "rollout.n_samples=4",
            "rollout.max_turns=3",
            "rollout.max_new_tokens=48",
            "rollout.max_prompt_tokens=300",
            "rollout.max_total_tokens=700",
            "rollout.max_observation_tokens=120",
            "rollout.search_top_k=2",
            "rollout.batch_size=16",
            "train.steps=2",
            "train.prompts_per_step=2",
            "train.lr=1e-4",
            "train.micro_batch_size=4",
            "train.seed=0",
            *[
                f"resources.{role}.num_cpus=0.2"
                for role in ("rollout", "policy", "reference", "critic", "scorer")
            ],
            f"logging.run_dir={run_dir}",
            "logging.progress_bar=false",
            "checkpoint.every_n_steps=1",
            "checkpoint.keep_last=2",
            *overrides,
        ],
    )

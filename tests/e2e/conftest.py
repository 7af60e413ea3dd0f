"""Real components for the end-to-end tests: a tiny world and a tiny warm-started Qwen2 built with
`igpo make-tiny-model` (no downloads, ~30 s) and the real search proxy on loopback serving the world's
corpus (the session fixtures `tiny` and `proxy` in tests/conftest.py, shared with tests/eval), and one local
Ray per test module. Everything tiny: 2 prompts x 4 rollouts, 2 steps."""

from __future__ import annotations

from pathlib import Path

from igpo_rlhf.config import Config, load_config
from tests.tiny_world import world_overrides  # the fixtures tiny and proxy: tests/conftest.py

ROOT = Path(__file__).resolve().parents[2]


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

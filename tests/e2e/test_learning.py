"""The learning test: a small RL task whose optimum is known (always search: tests/e2e/learning_task.py),
reached in 40 CPU steps through the real trainer (Ray actors, DeepSpeed ZeRO-2, the belief scorer, the
reference, the search proxy), with numbers only a correct gradient produces.

It fails when the code is wrong (each mutation applied by hand, run, reverted; see bench/RESULTS.md,
"Learning test"): with the advantage's sign flipped the policy learns to guess; with the action mask
shifted one token later the deciding first token is never trained; with the old log-probs read one position
off the on-policy ratio is not 1."""

from __future__ import annotations

import statistics

import pytest

from igpo_rlhf.config import load_config
from igpo_rlhf.data.datasets import load_questions
from igpo_rlhf.ray.trainer import Trainer
from services.search_proxy.launch import start_proxy
from tests.e2e.conftest import ROOT
from tests.e2e.learning_task import build_task, task_overrides

pytestmark = pytest.mark.slow

STEPS = 40


@pytest.fixture(scope="module")
def history(local_ray, tmp_path_factory):
    root = tmp_path_factory.mktemp("learning")
    task = build_task(root / "task")
    cfg = load_config(
        ROOT / "configs" / "demo.yaml",
        [
            *task_overrides(task, root / "run"),
            f"train.steps={STEPS}",
            f"search.proxy.cache.dir={root / 'cache'}",
        ],
    )
    with start_proxy(cfg.search.proxy, port=0) as proxy:
        trainer = Trainer(cfg, load_questions(cfg.data.train), proxy.url)
        try:
            return trainer.run()
        finally:
            trainer.close()


def mean(history: list[dict], key: str, steps: slice) -> float:
    return statistics.fmean(m[key] for m in history[steps])


def test_the_policy_learns_to_always_search(history):
    first, last = slice(0, 5), slice(STEPS - 5, STEPS)
    # the warm start is a coin flip between searching and guessing
    assert 0.2 <= mean(history, "rollout/searched_frac", first) <= 0.7
    assert mean(history, "reward/f1", first) <= 0.6
    # the optimum: search every time, and answer what the passage says
    assert mean(history, "rollout/searched_frac", last) >= 0.85
    assert mean(history, "reward/f1", last) >= mean(history, "reward/f1", first) + 0.3


def test_every_update_is_on_policy(history):
    """One PPO epoch over one mini-batch: the ratio π_θ / π_θold is 1 on every trained token, because the
    scorer's old log-probs and the policy's log-probs are the same quantity at the same positions."""
    for m in history:
        assert m["policy/approx_kl"] < 1e-6
        assert m["policy/ratio_max"] == pytest.approx(1.0, abs=1e-4)
        assert m["policy/clip_frac"] == 0.0

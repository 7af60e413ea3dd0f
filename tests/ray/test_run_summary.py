"""The line `igpo train` ends with (make demo's before / after figure), from a metrics.jsonl written here."""

from __future__ import annotations

import json

from igpo_rlhf.config import load_config
from igpo_rlhf.ray.train import run_summary


def write_metrics(run_dir, rows):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_the_summary_gives_first_last_and_best_held_out_f1(tmp_path):
    run_dir = tmp_path / "run"
    # validation at steps 0, 2 and 3; step 1 is a training row; steps 2 and 3 tie at 0.5: the earlier is best
    write_metrics(run_dir, [{"step": 0, "eval/f1": 0.1}, {"step": 1, "reward/f1": 0.9},
                            {"step": 2, "eval/f1": 0.5}, {"step": 3, "eval/f1": 0.5}])  # fmt: skip
    cfg = load_config(None, [f"logging.run_dir={run_dir}", "data.eval=[world:test]", "train.steps=3"])
    assert run_summary(cfg, 7) == (
        f"igpo train: 3 steps done → {run_dir} (metrics.jsonl, rollouts/, checkpoints/)\n"
        f"held-out F1 on world:test (7 questions, greedy): 0.100 at step 0 → 0.500 at step 3 (+0.400); "
        f"best 0.500 at step 2: {run_dir}/checkpoints/best"
    )
    sampled = load_config(
        None, [f"logging.run_dir={run_dir}", "data.eval=[world:test]", "eval.temperature=0.7"]
    )
    assert "(7 questions, temperature 0.7)" in run_summary(sampled, 7)


def test_without_validation_the_summary_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    write_metrics(run_dir, [{"step": 1, "reward/f1": 0.2}, {"step": 2, "reward/f1": 0.3}])
    cfg = load_config(None, [f"logging.run_dir={run_dir}", "train.steps=2"])
    assert (
        run_summary(cfg, 0)
        == f"igpo train: 2 steps done → {run_dir} (metrics.jsonl, rollouts/, checkpoints/)"
    )

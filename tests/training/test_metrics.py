"""Metrics sinks: metrics.jsonl, TensorBoard (read back), the console line; a resumed run's later lines drop."""

import json
import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from igpo_rlhf.config import LoggingConfig
from igpo_rlhf.training.metrics import MetricsLogger, append_event, console_line

M1 = {"reward/outcome": 0.25, "reward/f1": 0.5, "ig/mean": 0.0123, "ig/std": 0.02, "ig/positive_frac": 0.6,
      "rollout/turns": 2.5, "policy/kl": float("nan"), "time/rollout": 1.5, "time/step": 3.0}  # fmt: skip


def test_jsonl_tensorboard_and_console(tmp_path, capsys):
    cfg = LoggingConfig(run_dir=str(tmp_path), progress_bar=False)
    logger = MetricsLogger(tmp_path, cfg, total_steps=3, start_step=0, run_config={})
    line = logger.log(1, M1)
    logger.log(2, {**M1, "reward/outcome": 0.75})
    logger.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["reward/outcome"] == 0.25 and rows[1]["reward/outcome"] == 0.75
    assert rows[0]["policy/kl"] is None  # NaN is not JSON
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("reward/outcome")] == [(1, 0.25), (2, 0.75)]
    assert "policy/kl" not in events.Tags()["scalars"]
    assert line in capsys.readouterr().out
    assert line.startswith("step 1/3 | reward +0.250 f1 0.500 | IG +0.0123±0.0200 (60% >0) | turns 2.50")
    assert "kl" not in line and line.endswith("3.0s (rollout 1.5)")


def test_resume_drops_lines_after_the_checkpoint(tmp_path):
    cfg = LoggingConfig(run_dir=str(tmp_path), progress_bar=False, tensorboard=False)
    logger = MetricsLogger(tmp_path, cfg, total_steps=3, start_step=0, run_config={})
    for step in (1, 2, 3):
        logger.log(step, {"reward/outcome": float(step)})
    logger.close()
    resumed = MetricsLogger(tmp_path, cfg, total_steps=3, start_step=1, run_config={})
    resumed.log(2, {"reward/outcome": 20.0})
    resumed.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["reward/outcome"]) for r in rows] == [(1, 1.0), (2, 20.0)]


def test_console_line_skips_missing_metrics():
    assert console_line(1, 2, {"time/step": 1.0}) == "step 1/2 | 1.0s ()"
    assert "IG" not in console_line(1, 2, {"reward/outcome": -2.0, "ig/mean": math.nan})


def test_console_line_shows_search_errors_and_skipped_batches_when_there_are_some():
    clean = {
        "time/step": 1.0,
        "rollout/search_error_rate": 0.0,
        "search/skipped_batches": 0.0,
        "search/wait_s": 0.0,
    }
    assert console_line(1, 2, clean) == "step 1/2 | 1.0s ()"
    failing = {
        **clean,
        "rollout/search_error_rate": 0.25,
        "search/skipped_batches": 2.0,
        "search/wait_s": 35.2,
    }
    assert (
        console_line(1, 2, failing) == "step 1/2 | search-err 25% | skipped 2 batch(es), waited 35s | 1.0s ()"
    )


def test_events_are_json_lines_named_by_their_event_key(tmp_path):
    append_event(tmp_path, {"event": "search_recovered", "step": 3, "waited_s": 1.5})
    append_event(tmp_path, {"event": "search_down", "step": 3, "error": "x", "rate": math.nan})
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [
        {"event": "search_recovered", "step": 3, "waited_s": 1.5},
        {"event": "search_down", "step": 3, "error": "x", "rate": None},
    ]
    with pytest.raises(ValueError, match="an event needs an 'event' key naming it; got keys \\['step'\\]"):
        append_event(tmp_path, {"step": 3})

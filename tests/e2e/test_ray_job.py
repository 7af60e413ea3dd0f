"""`ray job submit --working-dir . --runtime-env ray_jobs/runtime_env.yaml -- python ray_jobs/train.py -c ...`,
the way users run on a cluster: the `ray` CLI submits to a real local cluster's job server (dashboard on
127.0.0.1), Ray ships the working directory, and the job's driver joins the cluster through RAY_ADDRESS.

The entrypoint names this interpreter (the test venv's python) instead of a bare `python`, which on a cluster
node is the image's python; everything else is the documented command."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from tests.e2e.conftest import ROOT, world_overrides

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def job_cluster():
    """A local Ray with its dashboard (the job server) on a free loopback port; yields the job address."""
    port = free_port()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
    )
    yield f"http://127.0.0.1:{port}"
    ray.shutdown()


def test_ray_job_submit_runs_a_training_step(tiny, job_cluster, tmp_path):
    world_dir, model_dir = tiny
    run_dir = tmp_path / "run"
    # the working directory Ray ships excludes .cache/ and runs/: the job gets absolute paths
    overrides = [
        f"model.path={model_dir}",
        *world_overrides(world_dir),
        "data.train=[world:train]",
        f"search.proxy.corpus={world_dir / 'corpus.jsonl'}",
        "search.proxy.cache.mode=off",
        f"search.proxy.cache.dir={tmp_path / 'search-cache'}",
        f"logging.run_dir={run_dir}",
        "logging.progress_bar=false",
        "train.steps=1",
        "train.prompts_per_step=2",
        "rollout.n_samples=4",
        "rollout.max_turns=3",
        "rollout.max_new_tokens=48",
    ]
    entrypoint = [sys.executable, "ray_jobs/train.py", "-c", "configs/demo.yaml"]
    for item in overrides:
        entrypoint += ["--set", item]
    ray_cli = Path(sys.executable).with_name("ray")
    proc = subprocess.run(
        [str(ray_cli), "job", "submit", "--address", job_cluster, "--working-dir", ".",
         "--runtime-env", "ray_jobs/runtime_env.yaml", "--", *entrypoint],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "succeeded" in out and "step 1/1 |" in out  # the job's console line reaches the submitter

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # step 0 is the held-out baseline the demo config validates before training; step 1 the trained step
    assert [r["step"] for r in rows] == [0, 1]
    assert "eval/f1" in rows[0] and "time/step" not in rows[0]
    assert "time/step" in rows[1] and "eval/f1" in rows[1]  # validated again at the end
    rollouts = (run_dir / "rollouts" / "step_00001.jsonl").read_text().splitlines()
    assert len(rollouts) == 2 * 4  # prompts_per_step x n_samples
    assert (run_dir / "checkpoints").is_dir()

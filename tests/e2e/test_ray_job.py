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
import time
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
def job_cluster(monkeypatch):
    """A local Ray with its dashboard (the job server) on a free loopback port; yields the job address.

    The job server hands each submission to the node's dashboard agent, which listens on Ray's fixed default
    port 52365; any other Ray on this machine (a benchmark, a run, the agents of a killed one still exiting)
    holds that port, and the job server then answers every submission "No available agent". `ray start` has
    --dashboard-agent-listen-port for this, `ray.init` has no argument for it: the test gives the agent a free
    port through the parameters `ray.init` builds (Ray's private RayParams)."""
    from ray._private import parameter

    agent_port = free_port()
    make_params = parameter.RayParams.__init__

    def with_agent_port(self, *args, **kwargs):
        kwargs.setdefault("dashboard_agent_listen_port", agent_port)
        make_params(self, *args, **kwargs)

    monkeypatch.setattr(parameter.RayParams, "__init__", with_agent_port)
    port = free_port()
    if ray.is_initialized():  # the suite's local Ray (tests/conftest.py) has no job server
        ray.shutdown()
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
    # A fresh head node's agent registers a moment after ray.init; until then the job server refuses every
    # submission with "No available agent ... please try again later" and starts nothing: retried on that only.
    deadline = time.monotonic() + 60
    while True:
        proc = subprocess.run(
            [str(ray_cli), "job", "submit", "--address", job_cluster, "--working-dir", ".",
             "--runtime-env", "ray_jobs/runtime_env.yaml", "--", *entrypoint],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        out = proc.stdout + proc.stderr
        if proc.returncode == 0 or "No available agent" not in out or time.monotonic() > deadline:
            break
        time.sleep(3)
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

"""When things fail during `igpo train`, with real components: the tiny model, real Ray actors, DeepSpeed, the real
search proxy behind `ScriptedBackend` (a real HTTP server in front of it that can be told to fail or hang).

- a search backend that never answers is exit 2 at start-up, quickly, before Ray starts;
- a backend that starts failing mid-run: the batch is not trained on (the policy's weights and the step do not
  move while the trainer waits), the step is rolled out again once the backend is back; when it does not come
  back, exit 4 with a checkpoint that `--resume` continues from, with the same prompts;
- a rollout actor SIGKILLed mid-step: exit 5 naming it; a rollout that does not finish in time: exit 6;
- `igpo train` SIGKILLed: its search proxy and its local Ray go with it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import torch

from igpo_rlhf.config import dump_config
from igpo_rlhf.data.datasets import PromptSampler, load_questions
from igpo_rlhf.ray.train import main as train_main
from igpo_rlhf.ray.trainer import Trainer
from tests.e2e.conftest import ROOT, e2e_config
from tests.e2e.test_train import read_jsonl
from tests.search_backends import ScriptedBackend, hanging_socket

pytestmark = pytest.mark.slow


def config_file(tiny, run_dir: Path, *overrides: str) -> Path:
    cfg = e2e_config(tiny, run_dir, *overrides)
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(dump_config(cfg), encoding="utf-8")
    return path


def children(pid: int) -> dict[int, str]:
    """Every live descendant of `pid`: {pid: command line}."""
    parent_of, command = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command[int(entry.name)] = command_line(int(entry.name))
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            parent_of[int(entry.name)] = int(fields[1])
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parent_of.items():
            if ppid == parent and child not in found:
                found[child] = command[child]
                frontier.append(child)
    return found


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def command_line(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


@pytest.fixture(scope="session")
def ended_by_session_end():
    """{pid: command line} of processes that must have ended by the end of the test session: checked then,
    not waited for in the test (Ray's agents take a fixed minute to exit; other tests run meanwhile)."""
    pending: dict[int, str] = {}
    yield pending
    deadline = time.monotonic() + 120.0
    while True:
        left = {pid: cmd for pid, cmd in pending.items() if alive(pid) and command_line(pid) == cmd}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert not left, f"still running at the end of the session: {left}"


def logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(read_jsonl(path)) if path.is_file() else 0


def message(capsys) -> str:
    """igpo train's message on stderr (Ray's actor logs go there too)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("igpo train:")]
    return lines[-1] if lines else "<no message>"


def policy_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return ray.get(trainer.policy.call_async("state_dict_for_sync")[0])


# ------------------------------------------------------------------------------------------------ start-up
@pytest.mark.timeout(
    120
)  # the check's default timeout is 5 s per request, no retries (not 30 s x 3 attempts)
def test_a_backend_that_never_answers_is_exit_2_before_ray_starts(tiny, tmp_path, capsys):
    run_dir = tmp_path / "hung"
    if (
        ray.is_initialized()
    ):  # the suite's local Ray (tests/conftest.py), so that the check below means something
        ray.shutdown()
    with hanging_socket() as url:
        code = train_main(["-c", str(config_file(tiny, run_dir, f"search.url={url}"))])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (
        f"igpo train: search backend at {url}: GET /healthz did not answer within 5 s "
        "(search.failures.check_timeout_s). Ray and the actors were not started"
    )
    assert not ray.is_initialized()
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "checkpoints").exists()


# --------------------------------------------------------------------------------------------- mid-run
@pytest.mark.timeout(900)
def test_a_batch_whose_searches_failed_is_not_trained_on_and_is_rolled_out_again(tiny, proxy, local_ray,
                                                                                  tmp_path, capsys):  # fmt: skip
    run_dir = tmp_path / "recover"
    cfg = e2e_config(tiny, run_dir, "train.steps=1", "search.retries=0", "search.failures.backoff_s=0.2",
                     "search.failures.recovery_timeout_s=300")  # fmt: skip
    waiting = threading.Event()

    def note_checks(_backend, _method, path):
        if path == "/healthz":
            waiting.set()  # the trainer rejected the batch and checks the backend

    with ScriptedBackend(proxy.url) as backend:
        trainer = Trainer(cfg, load_questions(cfg.data.train, world=cfg.data.world), backend.url)
        try:
            trainer.run()
            after_step_1 = policy_weights(trainer)
            backend.mode, backend.on_request = "fail", note_checks
            trainer.cfg.train.steps = 2
            outcome: list[object] = []
            thread = threading.Thread(target=lambda: outcome.append(_run(trainer)))
            thread.start()
            assert waiting.wait(timeout=600), "the trainer never checked the failing backend"
            # while it waits: nothing was trained on the failed batch
            assert trainer.step == 1
            during_wait = policy_weights(trainer)
            assert all(torch.equal(after_step_1[k], during_wait[k]) for k in after_step_1)
            assert logged_steps(run_dir) == 1
            time.sleep(1.0)  # a few failed checks (backoff 0.2, 0.4, ...)
            backend.on_request, backend.mode = None, "pass"
            thread.join(timeout=600)
            final = policy_weights(trainer)
        finally:
            trainer.close()
    [result] = outcome
    assert isinstance(result, list), result  # run() returned its history
    out = capsys.readouterr().out
    events = read_jsonl(run_dir / "events.jsonl")
    assert [e["event"] for e in events] == ["search_batch_rejected", "search_recovered"]
    rejected = events[0]
    assert rejected["step"] == 2 and rejected["errors"] == rejected["searches"] > 0
    n = rejected["searches"]
    assert rejected["reason"] == f"{n} of {n} searches failed (100% > search.failures.max_error_rate=0.2)"
    assert (
        f"step 2: the batch is not used: {n} of {n} searches failed (100% > search.failures.max_error_rate=0.2); "
        f"waiting for the search backend at {backend.url}" in out
    )
    assert f"step 2: search backend at {backend.url}: GET /healthz answered HTTP 500" in out
    assert f"step 2: the search backend at {backend.url} answers again after" in out
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert metrics[1]["search/skipped_batches"] == 1 and metrics[1]["search/wait_s"] > 1.0
    assert metrics[1]["rollout/search_error_rate"] == 0.0 and metrics[1]["rollout/search_errors"] == 0.0
    assert "skipped 1 batch(es), waited" in out
    rows = read_jsonl(run_dir / "rollouts" / "step_00002.jsonl")
    assert all(r["n_search_errors"] == 0 for r in rows) and any(r["n_searches"] > 0 for r in rows)
    assert any(not torch.equal(after_step_1[k], final[k]) for k in final)  # step 2 trained, once recovered


def _run(trainer: Trainer) -> object:
    try:
        return trainer.run()
    except Exception as exc:  # handed to the test thread
        return exc


@pytest.mark.timeout(900)
def test_a_backend_that_does_not_recover_stops_with_a_checkpoint_and_resume_continues(tiny, proxy, local_ray,
                                                                                       tmp_path, capsys):  # fmt: skip
    run_dir = tmp_path / "down"

    def fail_after_step_1(_backend, _method, _path):
        return "fail" if logged_steps(run_dir) >= 1 else None

    with ScriptedBackend(proxy.url, on_request=fail_after_step_1) as backend:
        args = ["-c", str(config_file(tiny, run_dir, f"search.url={backend.url}", f"resources.ray_address={local_ray}",
                                      "checkpoint.every_n_steps=10", "search.retries=0", "search.failures.backoff_s=0.5",
                                      "search.failures.recovery_timeout_s=3"))]  # fmt: skip
        code = train_main(args)
        err = message(capsys)
        assert code == 4, err
        checkpoint = run_dir / "checkpoints" / "step_00001"
        assert err.startswith(
            f"igpo train: the search backend at {backend.url} did not recover within "
            "search.failures.recovery_timeout_s=3 s of the first batch it failed (at step 2); "
            f"last: search backend at {backend.url}: GET /healthz answered HTTP 500"
        )
        assert err.endswith(
            f"Stopped; no step was trained on a failed batch; checkpoint {checkpoint} (step 1) holds the run: "
            "rerun with --resume once the backend is back"
        )
        assert [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step_")] == [
            "step_00001"
        ]
        events = read_jsonl(run_dir / "events.jsonl")
        assert [e["event"] for e in events] == ["search_batch_rejected", "search_down"]
        assert events[1]["checkpoint"] == str(checkpoint)
        assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")] == [1]

        backend.on_request, backend.mode = None, "pass"  # the backend is back
        assert train_main([*args, "--resume"]) == 0
    assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]
    # step 2 after --resume rolled out the prompts of the batch that was not trained on: the sampler's second
    # batch, drawn here by a fresh sampler with the run's seed (a checkpoint saved after that batch was drawn
    # would have given the third)
    cfg = e2e_config(tiny, run_dir)
    sampler = PromptSampler(
        load_questions(cfg.data.train, world=cfg.data.world), 2, cfg.train.seed, cfg.data.shuffle
    )
    sampler.next_batch()
    second = [p.question for p in sampler.next_batch()]
    rows = read_jsonl(run_dir / "rollouts" / "step_00002.jsonl")
    assert [r["question"] for r in rows[::4]] == second
    assert all(r["n_search_errors"] == 0 for r in rows)


# ---------------------------------------------------------------------------------------------- actors
@pytest.mark.timeout(900)
def test_a_rollout_actor_killed_mid_step_stops_the_run_naming_it(tiny, proxy, local_ray, tmp_path, capsys):
    run_dir = tmp_path / "killed"
    killed: list[int] = []

    def kill_the_rollout_actor_in_step_2(_backend, _method, path):
        if path == "/search" and logged_steps(run_dir) >= 1 and not killed:
            [pid] = [p for p, cmd in children(os.getpid()).items() if cmd.startswith("ray::RolloutActor")]
            os.kill(pid, signal.SIGKILL)  # as the OOM killer would
            killed.append(pid)
            return "hang"  # its request is never answered; its process is gone
        return None

    with ScriptedBackend(proxy.url, on_request=kill_the_rollout_actor_in_step_2) as backend:
        config = config_file(tiny, run_dir, f"search.url={backend.url}", f"resources.ray_address={local_ray}")
        code = train_main(["-c", str(config)])
    err = message(capsys)
    assert code == 5 and killed, err
    checkpoint = run_dir / "checkpoints" / "step_00001"
    assert err.startswith(
        "igpo train: rollout actor 0 died during generate for step 2: The actor is dead because"
    )
    assert err.endswith(
        f"The run stopped; the last checkpoint is {checkpoint} (step 1): rerun with --resume to continue from it"
    )
    assert checkpoint.is_dir()
    [event] = read_jsonl(run_dir / "events.jsonl")
    assert (event["event"], event["actors"], event["doing"], event["step"]) == (
        "actor_died",
        ["rollout actor 0"],
        "generate for step 2",
        1,
    )


@pytest.mark.timeout(900)
def test_a_rollout_that_does_not_finish_in_time_names_the_actor(tiny, proxy, local_ray, tmp_path, capsys):
    """The backend hangs after the start-up check; the client would wait 120 s a request, the rollout phase
    may take 5 s (train.timeouts.rollout_s)."""
    run_dir = tmp_path / "stuck"

    def hang_after_the_check(backend, _method, path):
        return "hang" if path == "/search" and backend.count("/search") >= 1 else None

    with ScriptedBackend(proxy.url, on_request=hang_after_the_check) as backend:
        config = config_file(tiny, run_dir, f"search.url={backend.url}", f"resources.ray_address={local_ray}",
                             "search.timeout_s=120", "train.timeouts.rollout_s=5")  # fmt: skip
        code = train_main(["-c", str(config)])
        hung = backend.count("/search", "hang")
    err = message(capsys)
    assert code == 6 and hung >= 1, err
    assert err == (
        "igpo train: rollout actor 0: generate for step 1 did not finish within 5 s (train.timeouts.rollout_s); "
        "the actor is stuck or far slower than expected. The run stopped; no checkpoint was written yet"
    )
    [event] = read_jsonl(run_dir / "events.jsonl")
    assert (event["event"], event["actors"], event["doing"]) == (
        "actor_timeout",
        ["rollout actor 0"],
        "generate for step 1",
    )


# ---------------------------------------------------------------------------------------------- driver
@pytest.mark.timeout(600)
def test_a_sigkilled_driver_leaves_no_process_behind(tiny, tmp_path, ended_by_session_end):
    """`igpo train` with its own search proxy and its own local Ray, SIGKILLed once its actors run: every
    process it started (the proxy, Ray's processes, the actors) ends, and the proxy's port is free.

    Ray's two per-node agents see the raylet die at once, then report it to the (dead) GCS with a timeout
    Ray hard-codes to 60 s before they exit: they are checked at the end of the session instead."""
    world_dir, _ = tiny
    run_dir = tmp_path / "driver"
    config = config_file(tiny, run_dir, f"search.proxy.corpus={world_dir / 'corpus.jsonl'}",
                         'search.proxy.cache.mode="off"', f"search.proxy.cache.dir={tmp_path / 'cache'}",
                         "train.steps=50")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen([sys.executable, "-m", "igpo_rlhf.cli", "train", "-c", str(config)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        while logged_steps(run_dir) < 1:  # actors placed and a step done (the test's timeout bounds this)
            assert driver.poll() is None, f"igpo train exited with {driver.returncode}"
            time.sleep(0.2)
        started = children(driver.pid)
        assert [cmd for cmd in started.values() if "services.search_proxy" in cmd], started
        assert [cmd for cmd in started.values() if "raylet" in cmd], started
        assert [cmd for cmd in started.values() if cmd.startswith("ray::PolicyActor")], started
        port = _proxy_port(run_dir / "search_proxy.log")
        driver.send_signal(signal.SIGKILL)
        assert driver.wait() == -signal.SIGKILL
        agents = {
            pid: cmd
            for pid, cmd in started.items()
            if cmd.startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent"))
        }
        while [pid for pid in started if pid not in agents and alive(pid)]:  # the test's timeout bounds this
            time.sleep(0.5)
        assert _port_free(port)
        ended_by_session_end.update(agents)
    finally:
        driver.kill()
        driver.wait()


def _proxy_port(log: Path) -> int:
    first = log.read_text(encoding="utf-8").splitlines()[0]  # search proxy: serving bm25 on http://HOST:PORT
    return int(first.rsplit(":", 1)[1])


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0

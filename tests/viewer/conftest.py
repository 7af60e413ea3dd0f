"""Real pieces for the viewer tests: a short real training run (`igpo train`, 2 IGPO steps of the tiny
warm-started model on the tiny world, through Ray, DeepSpeed and the search proxy) made once per session,
viewer servers (real uvicorn on 127.0.0.1), and Debian's headless Chromium driven by Selenium."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from igpo_rlhf.config import dump_config
from tests.e2e.conftest import ROOT, e2e_config
from tests.viewer.expected import read_jsonl, snapshot

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", "--hide-scrollbars")  # fmt: skip


# what the trained run held right after training, before any viewer opened it
SNAPSHOTS: dict[Path, dict[str, str]] = {}


@pytest.fixture(scope="session")
def trained_run(tiny, tmp_path_factory) -> Path:
    """run_dir of `igpo train`: 2 IGPO steps x 2 prompts x 4 rollouts (up to 3 turns) of the session's tiny
    model (tests/conftest.py), with its own local Ray and search proxy, in a subprocess (as a user runs it)."""
    root = tmp_path_factory.mktemp("viewer-run")
    world_dir, _ = tiny
    run_dir = root / "run"
    cfg = e2e_config(
        tiny,
        run_dir,
        f"search.proxy.corpus={world_dir / 'corpus.jsonl'}",
        'search.proxy.cache.mode="off"',
        f"search.proxy.cache.dir={root / 'search-cache'}",
        "checkpoint.every_n_steps=10",
    )
    config = root / "config.yaml"
    config.write_text(dump_config(cfg), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "igpo_rlhf.cli", "train", "-c", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert sorted(p.name for p in (run_dir / "rollouts").iterdir()) == [
        "step_00001.jsonl",
        "step_00002.jsonl",
    ]
    SNAPSHOTS[run_dir] = snapshot(run_dir)
    return run_dir


# ------------------------------------------------------------------------------------------- servers
@dataclass
class Viewer:
    url: str  # http://127.0.0.1:PORT


@pytest.fixture(scope="session")
def viewer(trained_run) -> Iterator[Viewer]:
    """`igpo view RUN_DIR --port 0` in its own process: the command as a user runs it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "igpo_rlhf.cli", "view", str(trained_run), "--port", "0"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, (
            f"igpo view printed {line!r}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
        )
        yield Viewer(f"http://127.0.0.1:{m.group(1)}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class InProcessViewer:
    """The viewer app on a real uvicorn server in a thread of this process (no second torch import)."""

    def __init__(self, path: Path, token: str | None = None) -> None:
        import uvicorn

        from igpo_rlhf.viewer.app import bind, create_app

        sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(path, token=token), log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture()
def serve():
    """serve(path, token=None) -> InProcessViewer; every server is stopped after the test."""
    started: list[InProcessViewer] = []

    def start(path: Path, token: str | None = None) -> InProcessViewer:
        started.append(InProcessViewer(path, token))
        return started[-1]

    yield start
    for s in started:
        s.stop()


# ------------------------------------------------------------------------------------------- browser
@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium, headless, through its chromedriver (never a downloaded browser)."""
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.fail(f"the browser tests need {CHROMIUM} and {CHROMEDRIVER}: apt-get install chromium chromium-driver "
                    "(make test installs them)")  # fmt: skip
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for a driver online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="igpo-view-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*BROWSER_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


# ---------------------------------------------------------------------------------- derived directories
def broken_copy(run: Path, out: Path) -> Path:
    """A copy of the run whose step 2 file ends with a non-JSON line, a row missing turn_spans and a cut last
    line (no newline), and whose metrics.jsonl ends mid-line."""
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    path = out / "rollouts" / "step_00002.jsonl"
    good = path.read_text(encoding="utf-8").splitlines()
    broken = json.loads(good[0])
    del broken["turn_spans"]
    path.write_text(
        "\n".join([*good, "{not json", json.dumps(broken), good[1][: len(good[1]) // 2]]), encoding="utf-8"
    )
    with (out / "metrics.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"step": 3, "reward/f1"')
    return out


def make_eval_dir(run: Path, out: Path) -> Path:
    """An eval directory in `igpo eval`'s layout from the run's real rollouts: rows in the training layout plus
    source, sample, chunk, key and the answer metrics; scores.json with per-source means; table.md."""
    out.mkdir()
    rows = []
    for step in (1, 2):
        for r in read_jsonl(run / "rollouts" / f"step_{step:05d}.jsonl"):
            r = {
                k: v
                for k, v in r.items()
                if k not in ("step", "estimator", "outcome_reward", "turn_rewards", "turn_advantages")
            }
            source = ["nq", "hotpotqa"][r["group_id"] % 2]
            r |= {"source": source, "key": r["question"], "sample": r["sample_id"], "chunk": step - 1,
                  "f1_igpo": r["f1"], "cover_em": r["em"], "format_fail": float(r["answer"] is None)}  # fmt: skip
            rows.append(r)
    (out / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    sources = {}
    for name in ("nq", "hotpotqa"):
        mine = [r for r in rows if r["source"] == name]
        sources[name] = {"n": len(mine), "f1": sum(r["f1"] for r in mine) / len(mine), "em": 0.0}
    curves = {name: [{"t": t, "mean_b": 0.1 * (t + 1), "mean_log_b": math.log(0.1 * (t + 1)), "n": 4} for t in range(2)]
              for name in sources}  # fmt: skip
    scores = {"sources": sources, "avg": {"f1": sum(s["f1"] for s in sources.values()) / 2}, "beliefs": curves,
              "setting": {"model": {"path": "/not/here"}, "protocol": "search_r1"}}  # fmt: skip
    (out / "scores.json").write_text(json.dumps(scores), encoding="utf-8")
    (out / "table.md").write_text("| source | f1 |\n", encoding="utf-8")
    return out

"""A proxy started by `start_proxy` does not outlive the process that started it: a launcher killed with
SIGKILL (no atexit, no cleanup) leaves no proxy process and no listening port behind. A launcher thread
that ends does not take the proxy with it (the proxy watches its parent process, not the thread)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from services.search_proxy.launch import start_proxy
from services.search_proxy.settings import ProxySettings

ROOT = Path(__file__).resolve().parents[2]

LAUNCHER = """
import sys, time
from services.search_proxy.launch import start_proxy
from services.search_proxy.settings import ProxySettings
proxy = start_proxy(ProxySettings.model_validate({"corpus": sys.argv[1], "cache": {"dir": sys.argv[2]}}))
print(proxy.pid, proxy.url, flush=True)
time.sleep(600)
"""


def gone(pid: int) -> bool:
    """No such process, or a zombie nobody reaped yet (its sockets are closed, it runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def port_closed(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) != 0


@pytest.mark.timeout(180)
def test_a_sigkilled_launcher_leaves_no_proxy_behind(tiny_corpus: Path, tmp_path: Path):
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(tiny_corpus), str(tmp_path / "cache")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pid_text, url = launcher.stdout.readline().split()  # type: ignore[union-attr]
        pid = int(pid_text)
        assert httpx.get(f"{url}/healthz").status_code == 200 and not gone(pid)
        launcher.send_signal(signal.SIGKILL)
        assert launcher.wait() == -signal.SIGKILL
        while not gone(pid):  # the test's timeout bounds this: the proxy polls its parent every 0.5 s
            time.sleep(0.1)
        assert port_closed(url)
    finally:
        launcher.kill()
        launcher.wait()


@pytest.mark.timeout(180)
def test_a_proxy_outlives_the_launcher_thread_while_its_process_runs(tiny_corpus: Path, tmp_path: Path):
    settings = ProxySettings.model_validate({"corpus": tiny_corpus, "cache": {"dir": tmp_path / "cache"}})
    started = []
    thread = threading.Thread(target=lambda: started.append(start_proxy(settings)))
    thread.start()
    thread.join()
    [proxy] = started
    try:
        time.sleep(2.0)  # four parent polls after the thread ended
        assert proxy.alive() and httpx.get(f"{proxy.url}/healthz").status_code == 200
    finally:
        assert proxy.stop() == 0

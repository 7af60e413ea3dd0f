"""Start the proxy as a subprocess (`python -m services.search_proxy`) and wait until it serves.

The trainer and the end-to-end tests use this: the proxy lives in its own process, so it is not slowed
by the driver's work and can be killed cleanly. It shuts down by itself when the process that started it
dies, even by SIGKILL (`--parent-pid`), so it never outlives its launcher holding its port.

    with start_proxy(settings) as proxy:        # port 0: the proxy picks a free port and prints it
        SearchClient(proxy.url).search(["who wrote hamlet"], top_k=3)
"""

from __future__ import annotations

import atexit
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from services.search_proxy.settings import ProxySettings, dump_settings

_SERVING = re.compile(r"search proxy: serving \S+ on (http://\S+)")
# The directory holding the `services` package, so the subprocess imports this very checkout.
_SOURCE_ROOT = str(Path(__file__).resolve().parents[2])


class ProxyProcess:
    """A running proxy subprocess: `.url`, `.stop()`, `.log_tail()`; a context manager that stops it."""

    def __init__(self, process: subprocess.Popen[bytes], log_file: Path, config_file: Path) -> None:
        self.process = process
        self.log_file = log_file
        self.config_file = config_file
        self.url = ""
        atexit.register(self.stop)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the proxy's log (stdout and stderr)."""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (graceful: pending cache writes finish), then SIGKILL after `timeout`; the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        atexit.unregister(self.stop)
        self.config_file.unlink(missing_ok=True)
        return self.process.returncode

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_proxy(
    settings: ProxySettings,
    *,
    port: int | None = 0,
    log_file: str | Path | None = None,
    ready_timeout: float = 120.0,
    env: dict[str, str] | None = None,
) -> ProxyProcess:
    """Start a proxy with these settings and return once GET /healthz says ready.

    port: 0 (default) = a free port chosen by the proxy; None = `settings.port`. log_file: where the
    proxy's stdout/stderr go (default: a temporary file, see `.log_file`). env: extra environment
    variables (API keys, the auth token). Raises RuntimeError with the log tail if the proxy exits or
    reports a failed load, TimeoutError if it is not ready within `ready_timeout` seconds.
    """
    settings.check_servable()
    if port is not None:
        settings = settings.model_copy(update={"port": port})
    config_fd, config_name = tempfile.mkstemp(prefix="search_proxy.", suffix=".yaml")
    os.close(config_fd)
    config_file = dump_settings(settings, config_name)
    if log_file is None:
        log_fd, log_name = tempfile.mkstemp(prefix="search_proxy.", suffix=".log")
        os.close(log_fd)
        log_file = log_name
    log_path = Path(log_file)
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (_SOURCE_ROOT, child_env.get("PYTHONPATH")) if p)
    child_env["PYTHONUNBUFFERED"] = "1"
    with log_path.open("wb") as log_handle:
        # --parent-pid: the proxy shuts down when this process dies, even by SIGKILL (no atexit runs then)
        command = [sys.executable, "-m", "services.search_proxy", "--config", str(config_file)]
        process = subprocess.Popen(
            [*command, "--parent-pid", str(os.getpid())],
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env,
        )
    proxy = ProxyProcess(process, log_path, config_file)
    try:
        _wait_ready(proxy, ready_timeout)
    except BaseException:
        proxy.stop()
        raise
    return proxy


def _wait_ready(proxy: ProxyProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if not proxy.alive():
                raise RuntimeError(
                    f"search proxy exited with code {proxy.process.returncode} before it was ready; "
                    f"last lines of {proxy.log_file}:\n{proxy.log_tail()}"
                )
            if not proxy.url:
                found = _SERVING.search(proxy.log_tail(200))
                if found:
                    proxy.url = found.group(1)
            if proxy.url:
                try:
                    health = client.get(f"{proxy.url}/healthz")
                except httpx.TransportError:
                    health = None
                if health is not None and health.status_code == 200:
                    return
                failed = (
                    health is not None
                    and health.headers.get("content-type", "").startswith("application/json")
                    and health.json().get("status") == "failed"
                )
                if failed:
                    raise RuntimeError(
                        f"search proxy failed to load: {health.json().get('error')}; "
                        f"last lines of {proxy.log_file}:\n{proxy.log_tail()}"
                    )
            time.sleep(0.05)
    raise TimeoutError(
        f"search proxy not ready after {timeout:g} s; last lines of {proxy.log_file}:\n{proxy.log_tail()}"
    )

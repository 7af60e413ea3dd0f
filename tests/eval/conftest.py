"""A real OpenAI-compatible server for the endpoint engine: `transformers serve` (it ships with transformers)
serving the tiny world model from its local directory, offline, in its own process on 127.0.0.1.

Found by trying it: `transformers serve DIR` loads a local directory with no hub access (HF_HUB_OFFLINE=1),
answers POST /v1/completions (prompt text, max_tokens, stop, temperature 0 = greedy, keeps the stop string in
the text, decodes without special tokens) and POST /v1/chat/completions; GET /v1/models fails without a hub
cache, so readiness is GET /health. It needs the `openai` package (its request types), a dev dependency.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def served(tiny, tmp_path_factory):
    """(base_url, model_dir): `transformers serve` of the tiny model; the log is printed if it fails."""
    _, model_dir = tiny
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cli = str(Path(sys.executable).with_name("transformers"))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [cli, "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve not ready after 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"{base}/v1", model_dir
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

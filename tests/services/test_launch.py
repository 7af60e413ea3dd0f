"""The proxy as a subprocess: start_proxy, the command line alone, restarts keeping index and cache."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from services.search_proxy.client import SearchClient, SearchError
from services.search_proxy.launch import start_proxy
from services.search_proxy.settings import ProxySettings
from tests.services.conftest import write_corpus

ROOT = Path(__file__).resolve().parents[2]


def test_restart_keeps_index_and_cache_and_replay_misses_are_errors(tiny_corpus: Path, tmp_path: Path):
    settings = ProxySettings.model_validate({"corpus": tiny_corpus, "cache": {"dir": tmp_path / "cache"}})
    with start_proxy(settings, log_file=tmp_path / "first.log") as proxy:
        assert proxy.url.startswith("http://127.0.0.1:") and not proxy.url.endswith(":0")
        with SearchClient(proxy.url) as client:
            first = client.search(["capital of Peru", "jazz"], top_k=2)
        assert [hits[0]["id"] for hits in first] == ["p1", "p6"]
    assert proxy.process.returncode == 0  # SIGTERM: a graceful shutdown
    assert "search proxy: serving bm25 on http://127.0.0.1:" in (tmp_path / "first.log").read_text()

    replay = settings.model_copy(update={"cache": settings.cache.model_copy(update={"mode": "replay"})})
    with start_proxy(replay, log_file=tmp_path / "second.log") as proxy:
        answer = httpx.post(
            f"{proxy.url}/search", json={"queries": ["CAPITAL of peru", "jazz"], "top_k": 2}
        ).json()
        assert [r["cached"] for r in answer["results"]] == [True, True]
        assert [r["hits"] for r in answer["results"]] == first
        with (
            SearchClient(proxy.url, retries=0) as client,
            pytest.raises(SearchError, match="HTTP 404: replay cache miss"),
        ):
            client.search(["tokyo"], top_k=2)
    assert "bm25: loaded the index from" in (tmp_path / "second.log").read_text()


def test_a_proxy_that_cannot_load_raises_with_the_log_tail(tmp_path: Path):
    corpus = write_corpus(tmp_path / "bad.jsonl")
    with corpus.open("a") as handle:
        handle.write('{"id": "x", "text": 5}\n')
    settings = ProxySettings.model_validate({"corpus": corpus, "cache": {"dir": tmp_path / "cache"}})
    with pytest.raises(RuntimeError) as info:
        start_proxy(settings, ready_timeout=120)
    message = str(info.value)
    assert "exited with code 1" in message or "failed to load" in message
    assert f"{corpus}:11: needs a string 'contents'" in message


def test_the_command_line_alone(tiny_corpus: Path, tmp_path: Path):
    command = [
        sys.executable,
        "-m",
        "services.search_proxy",
        "--backend",
        "bm25",
        "--corpus",
        str(tiny_corpus),
        "--port",
        "0",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first_line = process.stdout.readline()  # type: ignore[union-attr]
        assert first_line.startswith("search proxy: serving bm25 on http://127.0.0.1:")
        url = first_line.split()[-1]
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}/healthz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        answer = httpx.post(f"{url}/retrieve", json={"queries": ["powerhouse of the cell"], "topk": 1}).json()
        assert answer["result"][0][0]["id"] == "p8"
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0

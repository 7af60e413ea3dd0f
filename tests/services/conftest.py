"""Helpers for the search-proxy tests: tiny corpora and real uvicorn servers on 127.0.0.1, random ports."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

# Ten passages about distinct topics: small enough to score BM25 by hand, distinct enough for MiniLM.
TINY_PASSAGES = [
    {
        "id": "p0",
        "title": "Hamlet",
        "text": "Hamlet is a tragedy written by William Shakespeare around 1600.",
    },
    {
        "id": "p1",
        "title": "Lima",
        "text": "Lima is the capital and largest city of Peru, on the Pacific coast.",
    },
    {
        "id": "p2",
        "title": "Photosynthesis",
        "text": "Plants turn sunlight, water and carbon dioxide into sugar.",
    },
    {
        "id": "p3",
        "title": "Mount Everest",
        "text": "Everest is the highest mountain above sea level, in the Himalayas.",
    },
    {"id": "p4", "title": "Macbeth", "text": "Macbeth is a tragedy by Shakespeare about a Scottish general."},
    {"id": "p5", "title": "Python", "text": "Python is a programming language created by Guido van Rossum."},
    {"id": "p6", "title": "Jazz", "text": "Jazz is a music genre that originated in New Orleans."},
    {"id": "p7", "title": "Tokyo", "text": "Tokyo is the capital of Japan and its most populous city."},
    {"id": "p8", "title": "Mitochondria", "text": "The mitochondrion is the powerhouse of the cell."},
    {
        "id": "p9",
        "title": "Everest climbing",
        "text": "Tenzing Norgay and Edmund Hillary first climbed Everest in 1953.",
    },
]


def write_corpus(
    path: Path, passages: list[dict[str, Any]] = TINY_PASSAGES, *, layout: str = "title_text"
) -> Path:
    """Write passages as JSON lines, either {"id","title","text"} or Search-R1's {"id","contents"}."""
    with path.open("w", encoding="utf-8") as handle:
        for p in passages:
            if layout == "contents":
                record = {"id": p["id"], "contents": f'"{p["title"]}"\n{p["text"]}'}
            else:
                record = p
            handle.write(json.dumps(record) + "\n")
    return path


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "tiny.jsonl")


class ServerThread:
    """A real uvicorn server for an ASGI app, in a thread of the test process, on a free loopback port."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


@contextmanager
def serve(app: Any, *, wait_ready: bool = True, timeout: float = 120.0) -> Iterator[ServerThread]:
    """Serve `app`; with wait_ready, return once GET /healthz answers 200 (a proxy app's backend loaded)."""
    server = ServerThread(app).start()
    try:
        if wait_ready:
            deadline = time.monotonic() + timeout
            while httpx.get(f"{server.url}/healthz", timeout=5).status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not ready: {httpx.get(f'{server.url}/healthz').text}")
                time.sleep(0.02)
        yield server
    finally:
        server.stop()


def settled_health(url: str, timeout: float = 60.0) -> httpx.Response:
    """GET /healthz until the backend is no longer loading (or `timeout` seconds pass); the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        health = httpx.get(f"{url}/healthz")
        if health.json()["status"] != "loading" or time.monotonic() > deadline:
            return health
        time.sleep(0.01)


def free_port() -> int:
    """A port nothing listens on right now (for 'upstream is down' tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of a proxy's /metrics (0 when absent), e.g. metric(url, "search_proxy_queries_total")."""
    text = httpx.get(f"{url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0

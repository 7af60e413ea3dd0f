"""The remote backend and the proxy under faults: upstream down, slow upstream, overload (503 + Retry-After).

The upstream is either a second real proxy (bm25) or `fakes.gated_retriever`, a real uvicorn server that
holds requests until the test opens a gate, so "slow" and "busy" are set by the test, not by timing.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from services.search_proxy.app import create_app
from services.search_proxy.client import SearchClient
from services.search_proxy.settings import ProxySettings
from tests.services.conftest import free_port, metric, serve
from tests.services.fakes import failing_retriever, gated_retriever


def _remote(url: str, tmp_path: Path, **overrides: Any) -> ProxySettings:
    data = {"backend": "remote", "remote": {"url": url}, "cache": {"dir": tmp_path / "cache", "mode": "off"}}
    return ProxySettings.model_validate({**data, **overrides})


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)


def test_remote_forwards_to_another_retrieval_server(tiny_corpus: Path, tmp_path: Path):
    upstream_settings = ProxySettings.model_validate(
        {"corpus": tiny_corpus, "cache": {"dir": tmp_path / "up"}}
    )
    with (
        serve(create_app(upstream_settings)) as upstream,
        serve(create_app(_remote(f"{upstream.url}/retrieve", tmp_path))) as proxy,
    ):
        request = {
            "queries": ["Shakespeare tragedy", "highest mountain"],
            "topk": 2,
            "return_scores": True,
        }
        direct = httpx.post(f"{upstream.url}/retrieve", json=request).json()
        assert httpx.post(f"{proxy.url}/retrieve", json=request).json() == direct
        hits = httpx.post(f"{proxy.url}/search", json={"queries": ["highest mountain"], "top_k": 1}).json()
        top = direct["result"][1][0]
        assert hits["results"][0]["hits"] == [
            {
                "id": top["document"]["id"],
                "title": "Mount Everest",
                "text": "Everest is the highest mountain above sea level, in the Himalayas.",
                "score": top["score"],
            }
        ]


def test_upstream_down_gives_502_and_the_proxy_keeps_serving(tmp_path: Path):
    url = f"http://127.0.0.1:{free_port()}/retrieve"
    settings = _remote(url, tmp_path, upstream={"retries": 1, "backoff_s": 0.01})
    with serve(create_app(settings)) as proxy:
        for _ in range(2):
            response = httpx.post(f"{proxy.url}/search", json={"queries": ["anything"]})
            assert response.status_code == 502
            detail = response.json()["detail"]
            assert detail.startswith(
                f"backend 'remote': remote retriever at {url} is unreachable (ConnectError"
            )
            assert detail.endswith("(after 2 attempts)")
        assert httpx.get(f"{proxy.url}/healthz").status_code == 200
        assert metric(proxy.url, "search_proxy_upstream_errors_total", backend="remote", kind="error") == 2


def test_slow_upstream_hits_the_upstream_timeout_and_the_request_deadline(tmp_path: Path):
    gate, received = threading.Event(), []
    with serve(gated_retriever(gate, received), wait_ready=False) as upstream:
        try:
            settings = _remote(
                f"{upstream.url}/retrieve",
                tmp_path,
                upstream={"timeout_s": 0.3, "retries": 1, "backoff_s": 0.01},
            )
            with serve(create_app(settings)) as proxy:
                response = httpx.post(f"{proxy.url}/search", json={"queries": ["slow"]})
                assert response.status_code == 504
                assert response.json()["detail"] == (
                    f"backend 'remote': remote retriever at {upstream.url}/retrieve did not answer within 0.3 s "
                    "(ReadTimeout) (after 2 attempts)"
                )
                assert len(received) == 2  # the first call and one retry
                assert (
                    metric(proxy.url, "search_proxy_upstream_errors_total", backend="remote", kind="timeout")
                    == 1
                )
            deadline = _remote(
                f"{upstream.url}/retrieve",
                tmp_path,
                upstream={"timeout_s": 30},
                limits={"request_timeout_s": 0.3},
            )
            with serve(create_app(deadline)) as proxy:
                response = httpx.post(f"{proxy.url}/search", json={"queries": ["slower"]})
                assert response.status_code == 504
                assert response.json()["detail"] == (
                    "backend 'remote' did not answer within limits.request_timeout_s = 0.3 s"
                )
        finally:
            gate.set()


def test_overload_gets_503_with_retry_after_and_nothing_queues_without_bound(tmp_path: Path):
    gate, received = threading.Event(), []
    with serve(gated_retriever(gate, received), wait_ready=False) as upstream:
        try:
            limits = {"max_inflight_requests": 2, "retry_after_s": 3}
            with serve(create_app(_remote(f"{upstream.url}/retrieve", tmp_path, limits=limits))) as proxy:
                url = f"{proxy.url}/search"
                with ThreadPoolExecutor(2) as pool:
                    held = [
                        pool.submit(httpx.post, url, json={"queries": [f"q{i}"]}, timeout=60)
                        for i in range(2)
                    ]
                    _wait_for(lambda: metric(proxy.url, "search_proxy_inflight_requests") == 2)
                    refused = [httpx.post(url, json={"queries": [f"q{i}"]}) for i in range(2, 6)]
                    assert [r.status_code for r in refused] == [503] * 4
                    assert all(r.headers["retry-after"] == "3" for r in refused)
                    assert refused[0].json()["detail"].startswith("overloaded: 2 requests in flight")
                    gate.set()
                    answers = [f.result().json()["results"][0]["hits"][0]["id"] for f in held]
                assert answers == ["r-q0", "r-q1"]
                assert metric(proxy.url, "search_proxy_rejected_total") == 4
                # every upstream request came from the two admitted queries (micro-batched into one or two calls)
                assert sorted(q for body in received for q in body["queries"]) == ["q0", "q1"]
        finally:
            gate.set()


def test_the_client_retries_a_503_after_retry_after(tmp_path: Path):
    gate, received = threading.Event(), []
    with serve(gated_retriever(gate, received), wait_ready=False) as upstream:
        try:
            limits = {"max_inflight_requests": 1, "retry_after_s": 1}
            with serve(create_app(_remote(f"{upstream.url}/retrieve", tmp_path, limits=limits))) as proxy:
                client = SearchClient(proxy.url, retries=3, backoff_s=0.01)
                with ThreadPoolExecutor(2) as pool:
                    held = pool.submit(client.search, ["first"], 1)
                    _wait_for(lambda: metric(proxy.url, "search_proxy_inflight_requests") == 1)
                    retried = pool.submit(client.search, ["second"], 1)
                    _wait_for(lambda: metric(proxy.url, "search_proxy_rejected_total") >= 1)
                    gate.set()  # the held request finishes; the client's retry (after Retry-After: 1 s) gets in
                    assert held.result()[0][0]["id"] == "r-first"
                    assert retried.result()[0][0]["id"] == "r-second"
                client.close()
        finally:
            gate.set()


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"result": "nope"}, "answered without a 'result' list of 1 entries"),
        (
            {"result": [[{"document": {"id": 1}, "score": 1.0}]]},
            "the document has neither 'contents' nor 'text'",
        ),
    ],
)
def test_an_unreadable_upstream_answer_is_a_502(tmp_path: Path, answer: dict, message: str):
    from fastapi import FastAPI

    odd = FastAPI()
    odd.post("/retrieve")(lambda: answer)
    with (
        serve(odd, wait_ready=False) as upstream,
        serve(create_app(_remote(f"{upstream.url}/retrieve", tmp_path))) as proxy,
    ):
        response = httpx.post(f"{proxy.url}/search", json={"queries": ["q"]})
        assert response.status_code == 502 and message in response.json()["detail"]


def test_a_chunk_failing_mid_request_ends_the_streamed_answer_early(tmp_path: Path):
    settings = _remote("", tmp_path, upstream={"retries": 0}, batching={"max_queries": 2})
    queries = ["q0", "q1", "q2", "q3", "please fail", "q5"]  # 3 chunks; the upstream fails the third
    with serve(failing_retriever(), wait_ready=False) as upstream:
        settings.remote.url = f"{upstream.url}/retrieve"
        with serve(create_app(settings)) as proxy:
            url = f"{proxy.url}/retrieve"
            # the first chunk failing is an ordinary 502 naming the upstream
            first = httpx.post(url, json={"queries": queries[4:] + queries[:4]})
            assert first.status_code == 502
            assert first.json()["detail"].startswith(f"backend 'remote': remote retriever at {upstream.url}")
            # a later chunk failing closes the connection before the answer is complete: no client can take
            # a partial answer for a whole one (httpx, and requests as Search-R1 and verl use it)
            with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
                httpx.post(url, json={"queries": queries})
            with pytest.raises(requests.exceptions.ChunkedEncodingError):
                requests.post(url, json={"queries": queries})
            # the proxy keeps serving, and let every request go
            answer = httpx.post(url, json={"queries": queries[:4], "topk": 1}).json()["result"]
            assert [docs[0]["id"] for docs in answer] == ["r-q0", "r-q1", "r-q2", "r-q3"]
            assert metric(proxy.url, "search_proxy_inflight_requests") == 0
            assert (
                metric(proxy.url, "search_proxy_upstream_errors_total", backend="remote", kind="error") == 3
            )


def test_a_large_request_holds_two_chunks_and_lets_other_clients_in_between(tmp_path: Path):
    gate, received = threading.Event(), []
    with serve(gated_retriever(gate, received), wait_ready=False) as upstream:
        try:
            settings = _remote(f"{upstream.url}/retrieve", tmp_path, batching={"max_queries": 2})
            with serve(create_app(settings)) as proxy, ThreadPoolExecutor(2) as pool:
                large = pool.submit(
                    httpx.post,
                    f"{proxy.url}/retrieve",
                    json={"queries": [f"l{i}" for i in range(6)]},
                    timeout=60,
                )
                _wait_for(lambda: len(received) == 2)  # chunks 1 and 2 sent; chunk 3 waits for chunk 1
                small = pool.submit(httpx.post, f"{proxy.url}/retrieve", json={"queries": ["s"]}, timeout=60)
                _wait_for(lambda: len(received) == 3)
                assert [body["queries"] for body in received] == [["l0", "l1"], ["l2", "l3"], ["s"]]
                gate.set()
                assert small.result().json()["result"][0][0]["id"] == "r-s"
                assert [d[0]["id"] for d in large.result().json()["result"]] == [f"r-l{i}" for i in range(6)]
                assert [body["queries"] for body in received][3:] == [["l4", "l5"]]
        finally:
            gate.set()

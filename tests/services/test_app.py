"""The proxy's HTTP API on a real uvicorn server (127.0.0.1, random port) with the bm25 backend.

Both APIs, the cache flags and modes, every bad input the issue lists, auth on and off, /metrics,
/healthz and /docs.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import pytest

from services.search_proxy.__main__ import parse_args, settings_from_args
from services.search_proxy.app import create_app
from services.search_proxy.backends.bm25 import Bm25Backend, passage_text
from services.search_proxy.cache import CACHE_FILE
from services.search_proxy.corpus import read_corpus
from services.search_proxy.settings import Bm25Settings, ProxySettings
from tests.services.conftest import metric, serve, settled_health, write_corpus
from tests.services.test_bm25 import _slow_bm25, _words

K1, B = Bm25Settings().k1, Bm25Settings().b  # the proxy's defaults


def textbook_top(corpus: Path, query: str, k: int) -> list[tuple[str, float]]:
    """(passage id, score) of the k best passages by the test's own textbook BM25 (tests/services/test_bm25.py),
    best first, ties by corpus order, zero scores left out."""
    passages = read_corpus(corpus)
    scores = _slow_bm25([_words(passage_text(p)) for p in passages], _words(query), K1, B)
    order = sorted((i for i, s in enumerate(scores) if s > 0), key=lambda i: (-scores[i], i))[:k]
    return [(passages[i].id, scores[i]) for i in order]


def _settings(corpus: Path, cache_dir: Path, **overrides) -> ProxySettings:
    data = {"corpus": corpus, "cache": {"dir": cache_dir}, **overrides}
    return ProxySettings.model_validate(data)


@pytest.fixture
def proxy(tiny_corpus: Path, tmp_path: Path):
    limits = {"max_queries_per_request": 4, "max_query_chars": 20, "max_top_k": 10, "max_body_bytes": 2048}
    with serve(create_app(_settings(tiny_corpus, tmp_path / "cache", limits=limits))) as server:
        yield server


def test_retrieve_speaks_search_r1(proxy, tiny_corpus: Path):
    by_id = {p.id: p for p in read_corpus(tiny_corpus)}
    scored = httpx.post(
        f"{proxy.url}/retrieve",
        json={"queries": ["capital city", "tragedy"], "topk": 2, "return_scores": True},
    )
    assert scored.status_code == 200
    result = scored.json()["result"]
    for query, docs in zip(["capital city", "tragedy"], result, strict=True):
        expected = textbook_top(tiny_corpus, query, 2)
        assert [d["document"]["id"] for d in docs] == [pid for pid, _ in expected]
        assert [d["score"] for d in docs] == pytest.approx([score for _, score in expected], rel=1e-5)
        assert [d["document"]["contents"] for d in docs] == [
            f'"{by_id[pid].title}"\n{by_id[pid].text}' for pid, _ in expected
        ]
    plain = httpx.post(f"{proxy.url}/retrieve", json={"queries": ["capital city", "tragedy"], "topk": 2})
    assert plain.json() == {"result": [[r["document"] for r in query] for query in scored.json()["result"]]}
    # no topk: the default (3, like Search-R1's retriever); unknown keys are ignored, as Search-R1's server does
    default = httpx.post(f"{proxy.url}/retrieve", json={"queries": ["Everest"], "extra": 1}).json()["result"]
    assert sorted(d["id"] for d in default[0]) == ["p3", "p9"]  # only two passages mention Everest


def test_search_api_and_cache_flags(proxy, tiny_corpus: Path):
    first = httpx.post(
        f"{proxy.url}/search", json={"queries": ["Capital of Peru", "jazz"], "top_k": 1}
    ).json()
    assert first["backend"] == "bm25" and first["top_k"] == 1
    assert [r["query"] for r in first["results"]] == ["Capital of Peru", "jazz"]
    lima = first["results"][0]
    assert lima["hits"][0] == {
        "id": "p1",
        "title": "Lima",
        "text": "Lima is the capital and largest city of Peru, on the Pacific coast.",
        "score": pytest.approx(textbook_top(tiny_corpus, "Capital of Peru", 1)[0][1], rel=1e-5),
    }
    assert lima["cached"] is False and lima["backend_ms"] > 0
    # the same query modulo case and spacing is a cache hit; a new one is not; order and duplicates kept
    second = httpx.post(
        f"{proxy.url}/search", json={"queries": ["capital  of PERU", "tokyo", "capital of peru"], "top_k": 1}
    ).json()["results"]
    assert [(r["cached"], r["hits"][0]["id"]) for r in second] == [(True, "p1"), (False, "p7"), (True, "p1")]
    assert second[0]["backend_ms"] == 0.0 and second[0]["hits"] == lima["hits"]
    # another top_k is another cache entry
    assert (
        httpx.post(f"{proxy.url}/search", json={"queries": ["jazz"], "top_k": 2}).json()["results"][0][
            "cached"
        ]
        is False
    )


TOO_MANY = (
    "queries: 5 queries, more than limits.max_queries_per_request = 4; send fewer per request, or raise it "
    "where the proxy is started: limits.max_queries_per_request in its config file "
    "(search.proxy.limits.max_queries_per_request in a training config) or --max-queries-per-request N"
)
BAD_REQUESTS = [
    ("/search", {"queries": []}, 422, "queries: empty list; send at least one query"),
    (
        "/search",
        {"queries": ["a"] * 5},
        422,
        TOO_MANY,
    ),
    (
        "/search",
        {"queries": ["ok", "x" * 21]},
        422,
        "queries[1]: 21 characters, more than limits.max_query_chars = 20",
    ),
    ("/search", {"queries": ["  "]}, 422, "queries[0]: empty query"),
    ("/search", {"queries": ["a"], "top_k": 0}, 422, "top_k: 0 is outside the accepted range 1..10"),
    ("/search", {"queries": ["a"], "top_k": 11}, 422, "top_k: 11 is outside the accepted range 1..10"),
    ("/retrieve", {"queries": ["a"], "topk": 0}, 422, "topk: 0 is outside the accepted range 1..10"),
    (
        "/retrieve",
        {"queries": ["a"] * 5},
        422,
        TOO_MANY,
    ),
    ("/search", {"queries": "hamlet"}, 422, "queries: Input should be a valid array"),
    ("/search", {"queries": [1, "a"]}, 422, "queries.0: Input should be a valid string"),
    ("/search", {"queries": ["a"], "top_k": "3"}, 422, "top_k: Input should be a valid integer"),
    (
        "/retrieve",
        {"queries": ["a"], "return_scores": "yes"},
        422,
        "return_scores: Input should be a valid boolean",
    ),
    ("/search", {"queries": ["a"], "topk": 3}, 422, "topk: Extra inputs are not permitted"),
    ("/search", {"top_k": 3}, 422, "queries: Field required"),
    ("/search", ["a"], 422, "body: Input should be an object"),
    (
        "/search",
        {"queries": ["a"], "backend": "dense"},
        422,
        "backend: 'dense' is not served here; served: bm25",
    ),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), BAD_REQUESTS)
def test_bad_inputs_get_4xx_naming_the_field(proxy, path, body, status, message):
    response = httpx.post(f"{proxy.url}{path}", json=body)
    assert (response.status_code, response.json()["detail"]) == (status, message)


def test_malformed_and_oversized_bodies_and_the_server_keeps_serving(proxy, tmp_path: Path):
    good = {"queries": ["hamlet"], "top_k": 1}
    assert httpx.post(f"{proxy.url}/search", json=good).json()["results"][0]["cached"] is False
    broken = httpx.post(
        f"{proxy.url}/search", content=b'{"queries": [hamlet', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400 and broken.json()["detail"].startswith("malformed JSON body")
    empty = httpx.post(f"{proxy.url}/search", content=b"", headers={"content-type": "application/json"})
    assert empty.status_code == 400 and empty.json()["detail"].startswith("malformed JSON body: EOF")
    huge = json.dumps({"queries": ["a" * 3000]}).encode()
    declared = httpx.post(f"{proxy.url}/search", content=huge, headers={"content-type": "application/json"})
    assert declared.status_code == 413
    assert declared.json()["detail"] == (
        "request body: larger than limits.max_body_bytes = 2048 bytes; send fewer queries per request, or raise "
        "it where the proxy is started: limits.max_body_bytes in its config file "
        "(search.proxy.limits.max_body_bytes in a training config) or --max-body-bytes N"
    )
    chunked = httpx.post(  # no Content-Length: the limit is enforced while the body streams in
        f"{proxy.url}/search",
        content=iter([huge[:1500], huge[1500:]]),
        headers={"content-type": "application/json"},
    )
    assert chunked.status_code == 413
    # still serving, and the earlier answer is still in the cache
    again = httpx.post(f"{proxy.url}/search", json=good).json()["results"][0]
    assert again["cached"] is True and again["hits"][0]["id"] == "p0"
    with sqlite3.connect(tmp_path / "cache" / CACHE_FILE) as db:
        assert db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 1


def test_metrics_count_what_happened(proxy):
    httpx.post(f"{proxy.url}/search", json={"queries": ["jazz", "tokyo", "jazz"], "top_k": 1})
    httpx.post(f"{proxy.url}/retrieve", json={"queries": ["jazz"], "topk": 1})
    httpx.post(f"{proxy.url}/search", json={"queries": []})
    url = proxy.url
    assert metric(url, "search_proxy_queries_total", backend="bm25") == 4
    # "jazz" twice in the first request: one miss per distinct query is fetched, but both count as misses;
    # the /retrieve "jazz" is a hit
    assert metric(url, "search_proxy_cache_misses_total", backend="bm25") == 3
    assert metric(url, "search_proxy_cache_hits_total", backend="bm25") == 1
    assert metric(url, "search_proxy_requests_total", endpoint="/search", status="200") == 1
    assert metric(url, "search_proxy_requests_total", endpoint="/search", status="422") == 1
    assert metric(url, "search_proxy_requests_total", endpoint="/retrieve", status="200") == 1
    assert metric(url, "search_proxy_batch_queries_count", backend="bm25") == 1  # one backend call
    assert metric(url, "search_proxy_batch_queries_sum", backend="bm25") == 2  # for the 2 distinct queries
    # latency histograms: one observation per request (3), one per backend call (1)
    assert metric(url, "search_proxy_request_seconds_count", endpoint="/search") == 2
    assert metric(url, "search_proxy_request_seconds_count", endpoint="/retrieve") == 1
    assert metric(url, "search_proxy_backend_seconds_count", backend="bm25") == 1


def test_healthz_and_docs(proxy):
    health = httpx.get(f"{proxy.url}/healthz")
    assert health.status_code == 200
    assert health.json() == {
        "status": "ready",
        "backend": "bm25",
        "backends": ["bm25"],
        "passages": 10,
        "cache_mode": "read_write",
        "error": None,
    }
    assert httpx.get(f"{proxy.url}/docs").status_code == 200
    paths = httpx.get(f"{proxy.url}/openapi.json").json()["paths"]
    assert {"/retrieve", "/search", "/healthz", "/metrics"} <= set(paths)
    body = paths["/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"queries", "top_k", "backend"} and body["required"] == ["queries"]
    retrieve = paths["/retrieve"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(retrieve["properties"]) == {"queries", "topk", "return_scores"}


def test_replay_serves_only_what_was_cached(tiny_corpus: Path, tmp_path: Path):
    cache_dir = tmp_path / "cache"
    with serve(create_app(_settings(tiny_corpus, cache_dir))) as server:
        recorded = httpx.post(f"{server.url}/search", json={"queries": ["jazz"], "top_k": 2}).json()[
            "results"
        ][0]
    with serve(
        create_app(_settings(tiny_corpus, cache_dir, cache={"dir": cache_dir, "mode": "replay"}))
    ) as server:
        replayed = httpx.post(f"{server.url}/search", json={"queries": ["JAZZ"], "top_k": 2}).json()[
            "results"
        ][0]
        assert replayed["cached"] is True and replayed["hits"] == recorded["hits"]
        miss = httpx.post(f"{server.url}/search", json={"queries": ["jazz", "tokyo"], "top_k": 2})
        assert miss.status_code == 404
        assert miss.json()["detail"] == (
            "replay cache miss: 1 of 2 queries have no cached result for backend 'bm25' with top_k 2, "
            "e.g. 'tokyo' (cache.mode is replay)"
        )
        assert httpx.post(f"{server.url}/search", json={"queries": ["jazz"], "top_k": 3}).status_code == 404


def test_cache_off(tiny_corpus: Path, tmp_path: Path):
    settings = _settings(tiny_corpus, tmp_path / "cache", cache={"dir": tmp_path / "cache", "mode": "off"})
    with serve(create_app(settings)) as server:
        for _ in range(2):
            result = httpx.post(f"{server.url}/search", json={"queries": ["jazz"]}).json()["results"][0]
            assert result["cached"] is False
    assert not (tmp_path / "cache" / CACHE_FILE).exists()


def test_auth_on_and_off(tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    body = {"queries": ["jazz"]}
    with serve(create_app(_settings(tiny_corpus, tmp_path / "c1"))) as server:  # loopback: off by default
        assert httpx.post(f"{server.url}/search", json=body).status_code == 200
    settings = _settings(
        tiny_corpus, tmp_path / "c2", auth={"enabled": True, "token_env": "TEST_PROXY_TOKEN"}
    )
    monkeypatch.delenv("TEST_PROXY_TOKEN", raising=False)
    with pytest.raises(ValueError, match="the token variable TEST_PROXY_TOKEN is unset or empty"):
        create_app(settings)
    monkeypatch.setenv("TEST_PROXY_TOKEN", "s3cret")
    with serve(create_app(settings)) as server:
        for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}]:
            for path in ["/search", "/retrieve"]:
                refused = httpx.post(f"{server.url}{path}", json=body, headers=headers)
                assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert httpx.get(f"{server.url}/metrics", headers=headers).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert httpx.post(f"{server.url}/search", json=body, headers=good).status_code == 200
        assert httpx.post(f"{server.url}/retrieve", json=body, headers=good).status_code == 200
        assert httpx.get(f"{server.url}/metrics", headers=good).status_code == 200
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # liveness probes need no token


def test_a_corpus_that_fails_to_load_is_reported(tmp_path: Path):
    corpus = write_corpus(tmp_path / "bad.jsonl")
    with corpus.open("a") as handle:
        handle.write("{oops\n")
    failures: list[BaseException] = []
    app = create_app(_settings(corpus, tmp_path / "cache"), on_fatal=failures.append)
    with serve(app, wait_ready=False) as server:
        health = settled_health(server.url)
        assert health.status_code == 503 and health.json()["status"] == "failed"
        assert f"{corpus}:11: not valid JSON" in health.json()["error"]
        refused = httpx.post(f"{server.url}/search", json={"queries": ["a"]})
        assert refused.status_code == 503 and "failed to load" in refused.json()["detail"]
    assert len(failures) == 1 and isinstance(failures[0], ValueError)


CHUNKED = [  # 10 queries = 3 chunks of batching.max_queries 4: a repeat two chunks later, a query with no hit
    "capital city",
    "tragedy",
    "Everest",
    "jazz music",
    "tokyo",
    "python language",
    "the cell",
    "Scottish general",
    "TRAGEDY",
    "zebra",
]


def test_a_request_larger_than_a_batch_is_answered_in_chunks_and_streamed(tiny_corpus: Path, tmp_path: Path):
    expected = Bm25Backend(read_corpus(tiny_corpus), Bm25Settings()).retrieve(CHUNKED, 2)
    assert expected[-1] == []  # "zebra" matches nothing
    settings = _settings(tiny_corpus, tmp_path / "cache", batching={"max_queries": 4})
    with serve(create_app(settings)) as server:
        small = httpx.post(f"{server.url}/search", json={"queries": ["jazz music"], "top_k": 2})
        assert "content-length" in small.headers and "transfer-encoding" not in small.headers
        retrieved = httpx.post(
            f"{server.url}/retrieve", json={"queries": CHUNKED, "topk": 2, "return_scores": True}
        )
        assert (
            retrieved.headers["transfer-encoding"] == "chunked" and "content-length" not in retrieved.headers
        )
        assert retrieved.json() == {
            "result": [
                [
                    {"document": {"id": h.id, "contents": f'"{h.title}"\n{h.text}'}, "score": h.score}
                    for h in hits
                ]
                for hits in expected
            ]
        }
        searched = httpx.post(f"{server.url}/search", json={"queries": CHUNKED, "top_k": 2}).json()
        assert (searched["backend"], searched["top_k"]) == ("bm25", 2)
        assert [r["query"] for r in searched["results"]] == CHUNKED
        assert [r["hits"] for r in searched["results"]] == [[h.to_dict() for h in hits] for hits in expected]
        assert all(r["cached"] for r in searched["results"])  # the /retrieve before stored every answer
        # every backend call took at most one chunk; every request was let go
        calls = metric(server.url, "search_proxy_batch_queries_count", backend="bm25")
        assert (
            calls >= 3
            and metric(server.url, "search_proxy_batch_queries_bucket", backend="bm25", le="4.0") == calls
        )
        assert metric(server.url, "search_proxy_inflight_requests") == 0


def test_replay_refuses_a_large_request_before_streaming(tiny_corpus: Path, tmp_path: Path):
    cache_dir = tmp_path / "cache"
    with serve(create_app(_settings(tiny_corpus, cache_dir))) as server:
        recorded = httpx.post(f"{server.url}/search", json={"queries": CHUNKED[:-1], "top_k": 2}).json()
    replay = _settings(
        tiny_corpus, cache_dir, cache={"dir": cache_dir, "mode": "replay"}, batching={"max_queries": 4}
    )
    with serve(create_app(replay)) as server:
        replayed = httpx.post(f"{server.url}/search", json={"queries": CHUNKED[:-1], "top_k": 2})
        assert replayed.headers["transfer-encoding"] == "chunked"
        assert [r["hits"] for r in replayed.json()["results"]] == [r["hits"] for r in recorded["results"]]
        miss = httpx.post(f"{server.url}/search", json={"queries": CHUNKED, "top_k": 2})  # "zebra" is last
        assert miss.status_code == 404
        assert miss.json()["detail"] == (
            "replay cache miss: 1 of 9 queries have no cached result for backend 'bm25' with top_k 2, "
            "e.g. 'zebra' (cache.mode is replay)"
        )


def test_the_flags_that_raise_the_request_limits(tiny_corpus: Path, tmp_path: Path):
    args = ["--corpus", str(tiny_corpus), "--cache-dir", str(tmp_path / "cache")]
    settings = settings_from_args(
        parse_args([*args, "--max-queries-per-request", "3", "--max-body-bytes", "1024"])
    )
    assert (settings.limits.max_queries_per_request, settings.limits.max_body_bytes) == (3, 1024)
    with serve(create_app(settings)) as server:
        refused = httpx.post(f"{server.url}/retrieve", json={"queries": ["a", "b", "c", "d"]})
        assert refused.status_code == 422 and refused.json()["detail"].startswith(
            "queries: 4 queries, more than limits.max_queries_per_request = 3; send fewer per request"
        )
        assert httpx.post(f"{server.url}/retrieve", json={"queries": ["x" * 1100]}).status_code == 413
    defaults = settings_from_args(parse_args(args))
    assert defaults.limits.max_queries_per_request >= 16_384  # a training batch fits in one request
    with serve(create_app(defaults)) as server:
        answer = httpx.post(
            f"{server.url}/retrieve", json={"queries": ["Lima Peru capital"] * 16_384, "topk": 1}
        )
        assert answer.status_code == 200
        lima = {
            "id": "p1",
            "contents": '"Lima"\nLima is the capital and largest city of Peru, on the Pacific coast.',
        }
        assert answer.json() == {"result": [[lima]] * 16_384}


def test_an_empty_retrieve_is_answered_like_search_r1s_server(proxy):
    # Search-R1's client posts every turn, with an empty list when no rollout searched
    assert httpx.post(
        f"{proxy.url}/retrieve", json={"queries": [], "topk": 3, "return_scores": True}
    ).json() == {"result": []}

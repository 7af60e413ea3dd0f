"""The serper and bing backends against local fakes of their APIs (tests/services/fakes.py).

This machine cannot reach google.serper.dev or api.bing.microsoft.com, so each fake mimics the API's
documented request and answer; the tests check what the proxy sent (method, key header, parameters)
and what it made of the answers, the TTL of cached web results, and that keys never leak.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.search_proxy.app import create_app
from services.search_proxy.cache import CACHE_FILE
from services.search_proxy.settings import ProxySettings
from tests.services.conftest import serve, settled_health
from tests.services.fakes import fake_bing, fake_serper

KEY = "key-0123456789-never-logged"


def _settings(backend: str, url: str, tmp_path: Path, **overrides: Any) -> ProxySettings:
    section = {"url": url, "api_key_env": "TEST_WEB_KEY"}
    data = {"backend": backend, backend: section, "cache": {"dir": tmp_path / "cache", "ttl_s": 60}}
    return ProxySettings.model_validate({**data, **overrides})


def test_serper_request_and_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TEST_WEB_KEY", KEY)
    received: list[dict[str, Any]] = []
    with (
        serve(fake_serper(KEY, received), wait_ready=False) as api,
        serve(create_app(_settings("serper", f"{api.url}/search", tmp_path))) as proxy,
    ):
        body = httpx.post(
            f"{proxy.url}/search", json={"queries": ["Who wrote Hamlet", "nothing here"], "top_k": 2}
        )
        assert body.status_code == 200
        results = body.json()["results"]
        assert results[0]["hits"] == [
            {
                "id": "https://example.org/who-wrote-hamlet/1",
                "title": "who wrote hamlet - result 1",
                "text": "Snippet 1 about who wrote hamlet.",
                "score": 1.0,
                "url": "https://example.org/who-wrote-hamlet/1",
            },
            {
                "id": "https://example.org/who-wrote-hamlet/2",
                "title": "who wrote hamlet - result 2",
                "text": "Snippet 2 about who wrote hamlet.",
                "score": 0.5,  # 1 / rank
                "url": "https://example.org/who-wrote-hamlet/2",
            },
        ]
        assert results[1]["hits"] == []
        sent = sorted(received, key=lambda r: r["body"]["q"])
        assert [r["body"] for r in sent] == [
            {"q": "nothing here", "num": 2, "gl": "us", "hl": "en"},
            {"q": "who wrote hamlet", "num": 2, "gl": "us", "hl": "en"},  # the normalised query
        ]
        assert all(r["headers"]["x-api-key"] == KEY for r in sent)
        retrieve = httpx.post(f"{proxy.url}/retrieve", json={"queries": ["Who wrote Hamlet"], "topk": 2})
        assert retrieve.json()["result"][0][0] == {
            "id": "https://example.org/who-wrote-hamlet/1",
            "contents": '"who wrote hamlet - result 1"\nSnippet 1 about who wrote hamlet.',
        }
        assert len(received) == 2  # same query and top_k: the /retrieve call was a cache hit


def test_bing_request_and_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TEST_WEB_KEY", KEY)
    received: list[dict[str, Any]] = []
    with serve(fake_bing(KEY, received), wait_ready=False) as api:
        settings = _settings("bing", f"{api.url}/v7.0/search", tmp_path, limits={"max_top_k": 100})
        with serve(create_app(settings)) as proxy:
            results = httpx.post(
                f"{proxy.url}/search", json={"queries": ["capital of peru"], "top_k": 3}
            ).json()
            assert results["results"][0]["hits"][2] == {
                "id": "https://example.com/capital-of-peru/2",
                "title": "capital of peru - page 2",
                "text": "Bing snippet 2 for capital of peru.",
                "score": pytest.approx(1 / 3),
                "url": "https://example.com/capital-of-peru/2",
            }
            assert received[0]["params"] == {"q": "capital of peru", "count": "3", "mkt": "en-US"}
            assert received[0]["headers"]["ocp-apim-subscription-key"] == KEY
            # Bing caps count at 50; no webPages in the answer means no hits
            many = httpx.post(
                f"{proxy.url}/search", json={"queries": ["big", "nothing at all"], "top_k": 80}
            ).json()
            assert [len(r["hits"]) for r in many["results"]] == [50, 0]
            assert {r["params"]["count"] for r in received[1:]} == {"50"}


def test_web_results_expire_after_the_ttl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TEST_WEB_KEY", KEY)
    received: list[dict[str, Any]] = []
    with (
        serve(fake_serper(KEY, received), wait_ready=False) as api,
        serve(create_app(_settings("serper", f"{api.url}/search", tmp_path))) as proxy,
    ):

        def ask() -> bool:
            answer = httpx.post(f"{proxy.url}/search", json={"queries": ["jazz"]}).json()
            return answer["results"][0]["cached"]

        assert ask() is False
        assert ask() is True  # so the row is written
        with sqlite3.connect(tmp_path / "cache" / CACHE_FILE) as db:  # age it past ttl_s = 60
            db.execute("UPDATE results SET created_at = created_at - 61")
        assert ask() is False
        assert len(received) == 2


def test_a_bad_key_is_a_502_and_keys_never_leak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog):
    monkeypatch.setenv("TEST_WEB_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    for make, backend, path in [(fake_serper, "serper", "/search"), (fake_bing, "bing", "/v7.0/search")]:
        with (
            serve(make("another-key", []), wait_ready=False) as api,
            serve(create_app(_settings(backend, f"{api.url}{path}", tmp_path / backend))) as proxy,
        ):
            response = httpx.post(f"{proxy.url}/search", json={"queries": ["q"]})
            assert response.status_code == 502
            status = 403 if backend == "serper" else 401
            assert (
                f"{backend} at {api.url}{path} refused the request with HTTP {status}"
                in response.json()["detail"]
            )
            assert KEY not in response.text
            assert KEY not in httpx.get(f"{proxy.url}/metrics").text
    assert KEY not in caplog.text
    assert KEY not in "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())


def test_a_missing_key_fails_the_load_with_the_variable_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("TEST_WEB_KEY", raising=False)
    app = create_app(_settings("serper", "http://127.0.0.1:9/search", tmp_path))
    with serve(app, wait_ready=False) as proxy:
        health = settled_health(proxy.url).json()
        assert health["status"] == "failed"
        assert "needs an API key in the environment variable TEST_WEB_KEY" in health["error"]

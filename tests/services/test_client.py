"""SearchClient against a real proxy: results, errors with the URL and cause, no retry on a 4xx, tokens."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from services.search_proxy.app import create_app
from services.search_proxy.client import SearchClient, SearchError
from services.search_proxy.settings import ProxySettings
from tests.services.conftest import free_port, metric, serve


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory):
    from tests.services.conftest import write_corpus

    root = tmp_path_factory.mktemp("client")
    settings = ProxySettings.model_validate(
        {"corpus": write_corpus(root / "c.jsonl"), "cache": {"dir": root / "cache"}}
    )
    with serve(create_app(settings)) as server:
        yield server


def test_search_returns_the_proxy_hits_in_order(proxy):
    queries = ["jazz", "capital of Peru", "jazz"]
    expected = [
        r["hits"]
        for r in httpx.post(f"{proxy.url}/search", json={"queries": queries, "top_k": 2}).json()["results"]
    ]
    with SearchClient(proxy.url) as client:
        assert client.search(queries, top_k=2) == expected
        assert client.search([], top_k=2) == []
        assert expected[1][0]["title"] == "Lima" and set(expected[1][0]) == {"id", "title", "text", "score"}

    async def concurrently() -> list:
        client = SearchClient(proxy.url)
        try:
            return await asyncio.gather(*(client.asearch([q], top_k=2) for q in queries))
        finally:
            await client.aclose()

    assert [r[0] for r in asyncio.run(concurrently())] == expected


def test_a_dead_proxy_is_a_search_error_naming_url_and_cause():
    url = f"http://127.0.0.1:{free_port()}"
    with SearchClient(url, retries=1, backoff_s=0.01) as client, pytest.raises(SearchError) as info:
        client.search(["x"])
    assert str(info.value).startswith(f"search proxy at {url} failed after 2 attempts: ConnectError")


def test_a_4xx_is_raised_at_once_without_retries(proxy):
    before = metric(proxy.url, "search_proxy_requests_total", endpoint="/search", status="422")
    with SearchClient(proxy.url, retries=3) as client, pytest.raises(SearchError) as info:
        client.search(["x"], top_k=0)
    assert str(info.value) == (
        f"search proxy at {proxy.url} answered HTTP 422: top_k: 0 is outside the accepted range 1..100"
    )
    assert metric(proxy.url, "search_proxy_requests_total", endpoint="/search", status="422") == before + 1


def test_token_and_bad_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from tests.services.conftest import write_corpus

    monkeypatch.setenv("TEST_CLIENT_TOKEN", "t0ken")
    settings = ProxySettings.model_validate(
        {
            "corpus": write_corpus(tmp_path / "c.jsonl"),
            "cache": {"dir": tmp_path / "cache"},
            "auth": {"enabled": True, "token_env": "TEST_CLIENT_TOKEN"},
        }
    )
    with serve(create_app(settings)) as server:
        with SearchClient(server.url, token="t0ken") as client:
            assert client.search(["jazz"], 1)[0][0]["id"] == "p6"
        with SearchClient(server.url, token="nope") as client, pytest.raises(SearchError, match="HTTP 401"):
            client.search(["jazz"], 1)
    with pytest.raises(ValueError, match="is not an http"):
        SearchClient("127.0.0.1:8000")
    with pytest.raises(ValueError, match="timeout must be > 0"):
        SearchClient("http://x", timeout=0)
    with pytest.raises(ValueError, match="queries must be a list of strings"):
        SearchClient("http://x").search("not a list")  # type: ignore[arg-type]

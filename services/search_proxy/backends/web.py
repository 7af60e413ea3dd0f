"""Web search backends: Serper (Google results) and Bing Web Search v7, one upstream call per query.

Contracts, from each provider's documentation:
- Serper: `POST https://google.serper.dev/search`, header `X-API-KEY`, JSON body `{"q", "num", "gl", "hl"}`;
  the answer's `organic` list holds `{"title", "link", "snippet", "position"}`.
- Bing v7: `GET https://api.bing.microsoft.com/v7.0/search?q=&count=&mkt=`, header
  `Ocp-Apim-Subscription-Key`; the answer's `webPages.value` list holds `{"id", "name", "url", "snippet"}`
  (`count` is at most 50; `webPages` is absent when nothing matched). Microsoft retired the Bing Search
  APIs in August 2025; the backend stays for compatible endpoints and archived setups.

API keys come from environment variables (names in the settings) and never appear in logs, errors or
the result cache. Web results carry no relevance score, so a hit's score is 1 / rank (1, 1/2, 1/3, ...).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from services.search_proxy.backends import Hit, UpstreamError, options_key
from services.search_proxy.backends.upstream import call_upstream, make_client
from services.search_proxy.settings import BingSettings, SerperSettings, UpstreamSettings

BING_MAX_COUNT = 50


def _api_key(backend: str, env_var: str) -> str:
    key = os.environ.get(env_var, "").strip()
    if not key:
        raise ValueError(
            f"backend '{backend}' needs an API key in the environment variable {env_var} (it is unset or empty); "
            f"set it, or name another variable in {backend}.api_key_env"
        )
    return key


def _text(item: dict[str, Any], key: str) -> str:
    value = item.get(key)
    return value if isinstance(value, str) else ""


class _WebBackend:
    """Shared by Serper and Bing: per-query upstream calls, at most `upstream.max_concurrency` at once."""

    name: str

    def __init__(self, options: UpstreamSettings, *, cache_ttl_s: float) -> None:
        self.upstream = options
        self.cache_ttl_s = cache_ttl_s
        self.max_concurrent_calls = options.max_concurrency
        self._client = make_client(options)
        self._slots = asyncio.Semaphore(options.max_concurrency)

    async def _one(self, query: str, top_k: int) -> list[Hit]:
        raise NotImplementedError

    async def search(self, queries: list[str], top_k: int) -> list[list[Hit]]:
        """The queries' results, fetched concurrently; any failed query fails the batch (UpstreamError)."""

        async def limited(query: str) -> list[Hit]:
            async with self._slots:
                return await self._one(query, top_k)

        return list(await asyncio.gather(*(limited(q) for q in queries)))

    async def aclose(self) -> None:
        await self._client.aclose()


def _ranked(items: list[tuple[str, str, str]], top_k: int) -> list[Hit]:
    """Hits from (title, url, snippet) in the provider's order; id = url, score = 1 / rank."""
    return [
        Hit(id=url, title=title, text=snippet, score=1.0 / rank, url=url)
        for rank, (title, url, snippet) in enumerate(items[:top_k], start=1)
    ]


class SerperBackend(_WebBackend):
    """Google results through Serper (https://serper.dev)."""

    name = "serper"

    def __init__(self, options: SerperSettings, upstream: UpstreamSettings, *, cache_ttl_s: float) -> None:
        self._key = _api_key("serper", options.api_key_env)
        self.options = options
        self.cache_key = options_key("serper", options.url, options.gl, options.hl)
        super().__init__(upstream, cache_ttl_s=cache_ttl_s)

    async def _one(self, query: str, top_k: int) -> list[Hit]:
        body = await call_upstream(
            self._client,
            "POST",
            self.options.url,
            what="serper",
            options=self.upstream,
            headers={"X-API-KEY": self._key},
            json={"q": query, "num": top_k, "gl": self.options.gl, "hl": self.options.hl},
        )
        organic = body.get("organic", []) if isinstance(body, dict) else None
        if not isinstance(organic, list):
            raise UpstreamError(
                f"serper at {self.options.url}: the answer has no 'organic' list: {str(body)[:200]}"
            )
        items = [
            (_text(o, "title"), _text(o, "link"), _text(o, "snippet")) for o in organic if isinstance(o, dict)
        ]
        return _ranked([item for item in items if item[1]], top_k)


class BingBackend(_WebBackend):
    """Bing Web Search API v7."""

    name = "bing"

    def __init__(self, options: BingSettings, upstream: UpstreamSettings, *, cache_ttl_s: float) -> None:
        self._key = _api_key("bing", options.api_key_env)
        self.options = options
        self.cache_key = options_key("bing", options.url, options.mkt)
        super().__init__(upstream, cache_ttl_s=cache_ttl_s)

    async def _one(self, query: str, top_k: int) -> list[Hit]:
        body = await call_upstream(
            self._client,
            "GET",
            self.options.url,
            what="bing",
            options=self.upstream,
            headers={"Ocp-Apim-Subscription-Key": self._key},
            params={"q": query, "count": min(top_k, BING_MAX_COUNT), "mkt": self.options.mkt},
        )
        if not isinstance(body, dict):
            raise UpstreamError(
                f"bing at {self.options.url}: the answer is not a JSON object: {str(body)[:200]}"
            )
        web_pages = body.get("webPages") or {}  # no webPages: nothing matched
        pages = web_pages.get("value", []) if isinstance(web_pages, dict) else None
        if not isinstance(pages, list):
            raise UpstreamError(f"bing at {self.options.url}: webPages.value is not a list")
        items = [
            (_text(p, "name"), _text(p, "url"), _text(p, "snippet")) for p in pages if isinstance(p, dict)
        ]
        return _ranked([item for item in items if item[1]], top_k)

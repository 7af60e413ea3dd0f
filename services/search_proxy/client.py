"""`SearchClient`: what the rollout loop uses to call the proxy (POST /search, all queries in one request).

    client = SearchClient("http://127.0.0.1:8000")
    hits = client.search(["who wrote hamlet", "capital of peru"], top_k=3)
    hits[0][0]["title"], hits[0][0]["text"], hits[0][0]["score"]

Transient failures (connection errors, timeouts, 502/503/504) are retried with exponential backoff,
honouring the proxy's Retry-After; anything else, or running out of retries, raises SearchError with
the URL and the cause.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

_RETRIED_STATUS = frozenset({502, 503, 504})


class SearchError(RuntimeError):
    """The proxy could not be reached or answered with an error."""


class SearchClient:
    """Thread-safe client of one proxy. `search` is blocking; `asearch` is the asyncio twin."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        token: str | None = None,
        backend: str | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url: {url!r} is not an http(s) URL (e.g. http://127.0.0.1:8000)")
        if timeout <= 0 or retries < 0 or backoff_s < 0:
            raise ValueError(
                f"timeout must be > 0, retries and backoff_s >= 0; got {timeout}, {retries}, {backoff_s}"
            )
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.backend = backend
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(timeout=timeout, headers=self._headers, trust_env=False)
        self._async_client: httpx.AsyncClient | None = None

    def _body(self, queries: list[str], top_k: int) -> dict[str, Any]:
        if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
            raise ValueError(f"queries must be a list of strings, got {queries!r:.200}")
        body: dict[str, Any] = {"queries": queries, "top_k": top_k}
        if self.backend is not None:
            body["backend"] = self.backend
        return body

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after is not None and retry_after.isdigit():
            return float(retry_after)
        return self.backoff_s * 2**attempt

    def _result(self, response: httpx.Response, n_queries: int) -> list[list[dict[str, Any]]]:
        if response.status_code != 200:
            raise SearchError(
                f"search proxy at {self.url} answered HTTP {response.status_code}: {_detail(response)}"
            )
        try:
            results = response.json()["results"]
        except (ValueError, KeyError, TypeError):
            raise SearchError(
                f"search proxy at {self.url} sent an unreadable answer: {response.text[:200]!r}"
            ) from None
        if len(results) != n_queries:
            raise SearchError(
                f"search proxy at {self.url} answered {len(results)} results for {n_queries} queries"
            )
        return [r["hits"] for r in results]

    def search(self, queries: list[str], top_k: int = 3) -> list[list[dict[str, Any]]]:
        """Hits per query (each: id, title, text, score, maybe url), best first; raises SearchError."""
        if not queries:
            return []
        body = self._body(queries, top_k)
        cause = ""
        for attempt in range(self.retries + 1):
            response = None
            try:
                response = self._client.post(f"{self.url}/search", json=body)
            except httpx.TransportError as exc:
                cause = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code not in _RETRIED_STATUS:
                    return self._result(response, len(queries))
                cause = f"HTTP {response.status_code}: {_detail(response)}"
            if attempt < self.retries:
                time.sleep(self._delay(attempt, response))
        raise SearchError(f"search proxy at {self.url} failed after {self.retries + 1} attempts: {cause}")

    async def asearch(self, queries: list[str], top_k: int = 3) -> list[list[dict[str, Any]]]:
        """`search` for asyncio code (one AsyncClient per SearchClient, created on first use)."""
        if not queries:
            return []
        body = self._body(queries, top_k)
        if self._async_client is None:
            self._async_client = httpx.AsyncClient(
                timeout=self.timeout, headers=self._headers, trust_env=False
            )
        cause = ""
        for attempt in range(self.retries + 1):
            response = None
            try:
                response = await self._async_client.post(f"{self.url}/search", json=body)
            except httpx.TransportError as exc:
                cause = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code not in _RETRIED_STATUS:
                    return self._result(response, len(queries))
                cause = f"HTTP {response.status_code}: {_detail(response)}"
            if attempt < self.retries:
                await asyncio.sleep(self._delay(attempt, response))
        raise SearchError(f"search proxy at {self.url} failed after {self.retries + 1} attempts: {cause}")

    def close(self) -> None:
        self._client.close()

    async def aclose(self) -> None:
        self._client.close()
        if self._async_client is not None:
            await self._async_client.aclose()

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text[:200]))
    except (ValueError, AttributeError):
        return response.text[:200]

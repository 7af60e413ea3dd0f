"""HTTP calls to upstreams (a remote /retrieve server, web search APIs): timeouts, retries with backoff.

Shared by the remote and web backends. Retried: connection errors, timeouts, HTTP 429 and 5xx. Not
retried: other 4xx (a bad key or a bad request will not get better). Error messages name the upstream
and the cause, never request headers (which hold API keys).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from services.search_proxy.backends import UpstreamError, UpstreamTimeout
from services.search_proxy.settings import UpstreamSettings


def make_client(options: UpstreamSettings) -> httpx.AsyncClient:
    """An async HTTP client with the upstream timeout and a connection pool sized to the concurrency limit."""
    limits = httpx.Limits(
        max_connections=options.max_concurrency, max_keepalive_connections=options.max_concurrency
    )
    return httpx.AsyncClient(timeout=httpx.Timeout(options.timeout_s), limits=limits, trust_env=False)


async def call_upstream(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    what: str,
    options: UpstreamSettings,
    **request: Any,
) -> Any:
    """Send one request, retrying transient failures; return the decoded JSON body.

    `what` names the upstream in errors ("remote retriever", "serper"). Raises UpstreamTimeout when the
    last attempt timed out, UpstreamError for any other failure.
    """
    last: UpstreamError | None = None
    for attempt in range(options.retries + 1):
        if attempt:
            await asyncio.sleep(options.backoff_s * 2 ** (attempt - 1))
        try:
            response = await client.request(method, url, **request)
        except httpx.TimeoutException as exc:
            last = UpstreamTimeout(
                f"{what} at {url} did not answer within {options.timeout_s:g} s ({type(exc).__name__})"
            )
            continue
        except httpx.TransportError as exc:
            last = UpstreamError(f"{what} at {url} is unreachable ({type(exc).__name__}: {exc})")
            continue
        if response.status_code == 429 or response.status_code >= 500:
            last = UpstreamError(
                f"{what} at {url} answered HTTP {response.status_code}: {response.text[:200]}"
            )
            continue
        if response.status_code >= 400:
            raise UpstreamError(
                f"{what} at {url} refused the request with HTTP {response.status_code}: {response.text[:200]}"
            )
        try:
            return response.json()
        except ValueError:
            raise UpstreamError(
                f"{what} at {url} answered with a body that is not JSON: {response.text[:200]!r}"
            ) from None
    assert last is not None
    attempts = options.retries + 1
    raise type(last)(f"{last} (after {attempts} attempt{'s' if attempts > 1 else ''})")

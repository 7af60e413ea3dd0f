"""The agent loop's search client over HTTP: the search proxy (`services/search_proxy`) or any server with
its `POST /search` contract.

`run_rollouts` only needs a `Searcher` (agent_loop.py): `search(queries, top_k)` returning one hit list per
query and raising `SearchFailed` when the service fails. `ProxySearcher` is that, around the proxy's own
client (`services.search_proxy.client.SearchClient`: retries with backoff, Retry-After, bearer token); this
is the one module of the rollout component that knows the proxy. `check_search(url, search_cfg)`: the quick
check `igpo train` runs before Ray starts and while it waits for a failing backend (SearchUnavailable).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import httpx

from igpo_rlhf.rollout.agent_loop import SearchFailed
from services.search_proxy.client import SearchClient, SearchError

if TYPE_CHECKING:
    from igpo_rlhf.config import SearchConfig

CHECK_QUERY = "search backend check"  # the one real query of `check_search`


class SearchUnavailable(RuntimeError):
    """The search backend failed its check (`check_search`); the message names the URL and what failed."""


def search_token(search_cfg: SearchConfig) -> str | None:
    """The proxy's bearer token from the environment variable `search.token_env` names (None: no auth)."""
    if search_cfg.token_env is None:
        return None
    token = os.environ.get(search_cfg.token_env)
    if not token:
        raise ValueError(
            f"search.token_env={search_cfg.token_env!r} but that environment variable is not set"
        )
    return token


class ProxySearcher:
    """A `Searcher` over the proxy at `url`: one POST /search per call, all queries in it."""

    def __init__(self, url: str, *, timeout_s: float, retries: int, token: str | None = None) -> None:
        self.url = url
        self.client = SearchClient(url, timeout=timeout_s, retries=retries, token=token)

    @classmethod
    def from_config(cls, url: str, search_cfg: SearchConfig) -> ProxySearcher:
        """With the timeout, retries and token (`search.token_env`) of the `search` config section."""
        return cls(
            url, timeout_s=search_cfg.timeout_s, retries=search_cfg.retries, token=search_token(search_cfg)
        )

    def search(self, queries: list[str], top_k: int) -> list[list[dict[str, Any]]]:
        """One hit list per query (dicts with id, title, text, score); SearchFailed naming the URL and cause."""
        try:
            return self.client.search(queries, top_k)
        except SearchError as exc:
            raise SearchFailed(str(exc) or type(exc).__name__) from exc

    def close(self) -> None:
        self.client.close()


def check_search(url: str, search_cfg: SearchConfig) -> None:
    """The backend at `url` answers GET /healthz with 200, then one real query (POST /search, top_k 1) with
    one hit list; each request within `search.failures.check_timeout_s`, no retries. SearchUnavailable names
    the URL, the request and what failed. A proxy in cache replay mode (its /healthz says so) may answer the
    query with its 404 replay miss: it answers, and it serves only cached queries."""
    timeout = search_cfg.failures.check_timeout_s
    token = search_token(search_cfg)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = url.rstrip("/")
    with httpx.Client(timeout=timeout, headers=headers, trust_env=False) as client:

        def request(method: str, path: str, **kwargs: Any) -> httpx.Response:
            try:
                return client.request(method, f"{base}{path}", **kwargs)
            except httpx.TimeoutException:
                raise SearchUnavailable(
                    f"search backend at {base}: {method} {path} did not answer within {timeout:g} s "
                    "(search.failures.check_timeout_s)"
                ) from None
            except httpx.HTTPError as exc:
                raise SearchUnavailable(
                    f"search backend at {base}: {method} {path} failed: {type(exc).__name__}: {exc}"
                ) from None

        health = request("GET", "/healthz")
        if health.status_code != 200:
            raise SearchUnavailable(
                f"search backend at {base}: GET /healthz answered HTTP {health.status_code}: {health.text[:300]}"
            )
        replay = _json_field(health, "cache_mode") == "replay"
        answer = request("POST", "/search", json={"queries": [CHECK_QUERY], "top_k": 1})
        if replay and answer.status_code == 404:
            return
        if answer.status_code != 200:
            raise SearchUnavailable(
                f"search backend at {base}: one query (POST /search) answered HTTP {answer.status_code}: "
                f"{answer.text[:300]}"
            )
        results = _json_field(answer, "results")
        one = results[0] if isinstance(results, list) and len(results) == 1 else None
        if not isinstance(one, dict) or not isinstance(one.get("hits"), list):
            raise SearchUnavailable(
                f"search backend at {base}: one query (POST /search) got an answer without one hit list: "
                f"{answer.text[:300]!r}"
            )


def _json_field(response: httpx.Response, key: str) -> Any:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get(key) if isinstance(body, dict) else None

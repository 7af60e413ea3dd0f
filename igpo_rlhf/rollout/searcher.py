"""The agent loop's search client over HTTP: the search proxy (`services/search_proxy`) or any server with
its `POST /search` contract.

`run_rollouts` only needs a `Searcher` (agent_loop.py): `search(queries, top_k)` returning one hit list per
query and raising `SearchFailed` when the service fails. `ProxySearcher` is that, around the proxy's own
client (`services.search_proxy.client.SearchClient`: retries with backoff, Retry-After, bearer token); this
is the one module of the rollout component that knows the proxy.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from igpo_rlhf.rollout.agent_loop import SearchFailed
from services.search_proxy.client import SearchClient, SearchError

if TYPE_CHECKING:
    from igpo_rlhf.config import SearchConfig


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

"""Remote backend: another server that speaks Search-R1's `/retrieve` contract (e.g. a GPU faiss server).

Request `{"queries": [...], "topk": k, "return_scores": true}`; answer
`{"result": [[{"document": {"id", "contents"}, "score": s}, ...], ...]}`, one list per query.
"""

from __future__ import annotations

import hashlib
from typing import Any

from services.search_proxy.backends import Hit, UpstreamError, options_key
from services.search_proxy.backends.upstream import call_upstream, make_client
from services.search_proxy.corpus import split_contents
from services.search_proxy.settings import UpstreamSettings


def _hit(item: Any, where: str) -> Hit:
    """A Hit from one `/retrieve` entry (with scores: {"document", "score"}; without: the document)."""
    if not isinstance(item, dict):
        raise UpstreamError(f"{where}: expected an object, got {type(item).__name__}")
    document, score = (item["document"], item.get("score", 0.0)) if "document" in item else (item, 0.0)
    if not isinstance(document, dict) or not isinstance(score, int | float):
        raise UpstreamError(f"{where}: expected a document object and a numeric score, got {item!r:.200}")
    if isinstance(document.get("contents"), str):
        title, text = split_contents(document["contents"])
    elif isinstance(document.get("text"), str):
        title, text = str(document.get("title") or ""), document["text"]
    else:
        raise UpstreamError(f"{where}: the document has neither 'contents' nor 'text': {document!r:.200}")
    pid = document.get("id")
    if pid is None:  # some corpora carry no ids: derive a stable one from the passage
        pid = "sha1:" + hashlib.sha1(f"{title}\n{text}".encode()).hexdigest()[:16]
    url = document.get("url")
    return Hit(
        id=str(pid), title=title, text=text, score=float(score), url=url if isinstance(url, str) else None
    )


class RemoteBackend:
    """Forwards each batch as one `/retrieve` call to another retrieval server."""

    name = "remote"
    cache_ttl_s = 0.0

    def __init__(self, url: str, options: UpstreamSettings) -> None:
        self.url = url
        self.options = options
        self.max_concurrent_calls = options.max_concurrency
        self.cache_key = options_key("remote", url)
        self._client = make_client(options)

    async def search(self, queries: list[str], top_k: int) -> list[list[Hit]]:
        """One upstream call for the whole batch; an upstream failure raises UpstreamError / UpstreamTimeout."""
        body = await call_upstream(
            self._client,
            "POST",
            self.url,
            what="remote retriever",
            options=self.options,
            json={"queries": queries, "topk": top_k, "return_scores": True},
        )
        result = body.get("result") if isinstance(body, dict) else None
        if not isinstance(result, list) or len(result) != len(queries):
            raise UpstreamError(
                f"remote retriever at {self.url} answered without a 'result' list of {len(queries)} "
                f"entries (one per query): {str(body)[:200]}"
            )
        hits = []
        for i, ranking in enumerate(result):
            if not isinstance(ranking, list):
                raise UpstreamError(f"remote retriever at {self.url}: result[{i}] is not a list")
            hits.append(
                [
                    _hit(item, f"remote retriever at {self.url}: result[{i}][{j}]")
                    for j, item in enumerate(ranking[:top_k])
                ]
            )
        return hits

    async def aclose(self) -> None:
        await self._client.aclose()

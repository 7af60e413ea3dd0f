"""Retriever backends behind one small interface, and the factory that builds them from ProxySettings.

A backend answers a batch of (already normalised) queries with the top_k hits of each:

    await backend.search(queries, top_k) -> list[list[Hit]]     # len == len(queries), best hit first

Local backends (bm25, dense, hybrid) also offer the blocking `retrieve(queries, top_k)`, which `search`
runs on the backend's own worker thread so retrieval never blocks the event loop. Heavy imports
(faiss, sentence-transformers, torch) happen only inside the dense backend.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from services.search_proxy.settings import WEB_BACKENDS, ProxySettings


@dataclass(frozen=True, slots=True)
class Hit:
    """One retrieved passage with the backend's score (higher is better)."""

    id: str
    title: str
    text: str
    score: float
    url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form; `url` only when the backend has one."""
        out = asdict(self)
        if self.url is None:
            del out["url"]
        return out


class UpstreamError(RuntimeError):
    """A remote or web upstream failed: unreachable, an error status, or an unreadable answer (HTTP 502)."""


class UpstreamTimeout(UpstreamError):
    """A remote or web upstream did not answer in time (HTTP 504)."""


class Backend(Protocol):
    """What the proxy needs from a retriever."""

    name: str  # the backend's name in requests and metrics ("bm25", "dense", ...)
    cache_key: str  # identity in the result cache: changes when the corpus or a scoring option does
    cache_ttl_s: float  # age after which a cached answer is refetched; 0 = never expires
    max_concurrent_calls: int  # search() calls the micro-batcher may run at once

    async def search(self, queries: list[str], top_k: int) -> list[list[Hit]]: ...

    async def aclose(self) -> None: ...


class LocalBackend:
    """Shared part of the in-process backends (bm25, dense, hybrid): a blocking `retrieve` that subclasses
    implement, run by `search` on the backend's one worker thread, over `self.passages`."""

    cache_ttl_s = 0.0
    max_concurrent_calls = 1
    passages: list  # list[Passage]

    def _start_worker(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)

    def retrieve(self, queries: list[str], top_k: int) -> list[list[Hit]]:
        raise NotImplementedError

    def _hit(self, doc: int, score: float) -> Hit:
        p = self.passages[doc]
        return Hit(id=p.id, title=p.title, text=p.text, score=score, url=p.url)

    async def search(self, queries: list[str], top_k: int) -> list[list[Hit]]:
        """`retrieve` on this backend's worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.retrieve, queries, top_k)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False)


def options_key(name: str, *parts: object) -> str:
    """`name:` + a short hash of the given options (for cache keys and index directory names)."""
    blob = json.dumps([str(p) if isinstance(p, Path) else p for p in parts], sort_keys=True, default=str)
    return f"{name}:{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def build_backends(settings: ProxySettings) -> dict[str, Backend]:
    """The backends a proxy with these settings serves, by name; the configured one is `settings.backend`.

    A hybrid proxy also serves its two components, so a request may pick `bm25`, `dense` or `hybrid`.
    Blocking (reads the corpus, loads or builds indexes); call it off the event loop.
    """
    settings.check_servable()
    name = settings.backend
    if name in ("bm25", "dense", "hybrid"):
        from services.search_proxy.corpus import corpus_fingerprint, read_corpus

        assert settings.corpus is not None  # check_servable() guarantees it
        passages = read_corpus(settings.corpus)
        fingerprint = corpus_fingerprint(settings.corpus)
        index_root = settings.cache.dir / "index"
        backends: dict[str, Backend] = {}
        if name in ("bm25", "hybrid"):
            from services.search_proxy.backends.bm25 import Bm25Backend

            backends["bm25"] = Bm25Backend(
                passages, settings.bm25, index_root=index_root, fingerprint=fingerprint
            )
        if name in ("dense", "hybrid"):
            from services.search_proxy.backends.dense import DenseBackend

            backends["dense"] = DenseBackend(
                passages, settings.dense, index_root=index_root, fingerprint=fingerprint
            )
        if name == "hybrid":
            from services.search_proxy.backends.hybrid import HybridBackend

            backends["hybrid"] = HybridBackend(backends["bm25"], backends["dense"], settings.hybrid)  # type: ignore[arg-type]
        return backends
    if name == "remote":
        from services.search_proxy.backends.remote import RemoteBackend

        assert settings.remote.url is not None  # check_servable() guarantees it
        return {"remote": RemoteBackend(settings.remote.url, settings.upstream)}
    from services.search_proxy.backends.web import BingBackend, SerperBackend

    ttl = settings.cache.ttl_s if name in WEB_BACKENDS else 0.0
    if name == "serper":
        return {"serper": SerperBackend(settings.serper, settings.upstream, cache_ttl_s=ttl)}
    return {"bing": BingBackend(settings.bing, settings.upstream, cache_ttl_s=ttl)}

"""Hybrid retrieval: reciprocal-rank fusion (RRF, Cormack et al. 2009) of the bm25 and dense rankings.

    fused(d) = w_bm25 / (k + rank_bm25(d)) + w_dense / (k + rank_dense(d))      rank from 1

A passage missing from one ranking (beyond `depth`) gets nothing from it. Equal fused scores are
ordered by where the passage was first seen (the bm25 ranking before the dense one, better rank first).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from services.search_proxy.backends import Hit, options_key
from services.search_proxy.backends.bm25 import Bm25Backend
from services.search_proxy.backends.dense import DenseBackend
from services.search_proxy.settings import HybridSettings


def reciprocal_rank_fusion(
    rankings: list[list[Hit]], weights: list[float], rrf_k: float, top_k: int
) -> list[Hit]:
    """Fuse best-first rankings of one query; each hit's score becomes its fused RRF score."""
    fused: dict[str, float] = {}
    first_seen: dict[str, tuple[int, int, Hit]] = {}  # id -> (ranking index, rank, hit) of its first sighting
    for which, (ranking, weight) in enumerate(zip(rankings, weights, strict=True)):
        for rank, hit in enumerate(ranking, start=1):
            fused[hit.id] = fused.get(hit.id, 0.0) + weight / (rrf_k + rank)
            first_seen.setdefault(hit.id, (which, rank, hit))
    order = sorted(fused, key=lambda pid: (-fused[pid], first_seen[pid][:2], pid))[:top_k]
    out = []
    for pid in order:
        hit = first_seen[pid][2]
        out.append(Hit(id=hit.id, title=hit.title, text=hit.text, score=fused[pid], url=hit.url))
    return out


class HybridBackend:
    """RRF of a Bm25Backend and a DenseBackend over the same corpus."""

    name = "hybrid"
    cache_ttl_s = 0.0
    max_concurrent_calls = 1

    def __init__(self, bm25: Bm25Backend, dense: DenseBackend, options: HybridSettings) -> None:
        self.bm25, self.dense, self.options = bm25, dense, options
        self.cache_key = options_key("hybrid", bm25.cache_key, dense.cache_key, options.model_dump())
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hybrid")

    def retrieve(self, queries: list[str], top_k: int) -> list[list[Hit]]:
        """Top-k passages per query by fused RRF score, best first."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        depth = max(top_k, self.options.depth)
        lexical = self.bm25.retrieve(queries, depth)
        semantic = self.dense.retrieve(queries, depth)
        weights = [self.options.bm25_weight, self.options.dense_weight]
        return [
            reciprocal_rank_fusion([a, b], weights, self.options.rrf_k, top_k)
            for a, b in zip(lexical, semantic, strict=True)
        ]

    async def search(self, queries: list[str], top_k: int) -> list[list[Hit]]:
        """`retrieve` on this backend's worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.retrieve, queries, top_k)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False)

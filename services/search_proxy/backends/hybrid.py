"""Hybrid retrieval: the bm25 and dense backends fused, by rank or by score.

`rrf` (reciprocal-rank fusion, Cormack et al. 2009), over each retriever's top `depth`, ranks from 1:

    fused(d) = w_bm25 / (k + rank_bm25(d)) + w_dense / (k + rank_dense(d))

A passage missing from one ranking gets nothing from it; equal fused scores are ordered by where the
passage was first seen (the bm25 ranking before the dense one, better rank first).

`zscore`, over every passage of the corpus, with z(x) = (x - mean(x)) / (std(x) + 1e-9) (population std):

    fused(d) = w_bm25 * z(bm25)(d) + w_dense * z(cosine)(d)

Standardising puts BM25's unbounded scores and cosine similarities on one scale, so a weight says how
much each retriever counts. Ties are ordered by corpus position. Exact but O(corpus) per query.
"""

from __future__ import annotations

import numpy as np

from services.search_proxy.backends import Hit, LocalBackend, options_key
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


def zscore_fusion(
    bm25_scores: np.ndarray, dense_scores: np.ndarray, weights: tuple[float, float], top_k: int
) -> list[tuple[int, float]]:
    """(passage index, fused score) of the top_k passages by w_bm25 z(bm25) + w_dense z(dense); [N] inputs."""

    def z(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        return (x - x.mean()) / (x.std() + 1e-9)

    fused = weights[0] * z(bm25_scores) + weights[1] * z(dense_scores)
    k = min(top_k, len(fused))
    kth = np.partition(fused, len(fused) - k)[len(fused) - k]  # the k-th largest fused score
    candidates = np.flatnonzero(fused >= kth)
    order = np.lexsort((candidates, -fused[candidates]))[:k]
    return [(int(candidates[i]), float(fused[candidates[i]])) for i in order]


class HybridBackend(LocalBackend):
    """A Bm25Backend and a DenseBackend over the same corpus, fused as `options.fusion` says."""

    name = "hybrid"

    def __init__(self, bm25: Bm25Backend, dense: DenseBackend, options: HybridSettings) -> None:
        if len(bm25.passages) != len(dense.passages):
            raise ValueError("hybrid: the bm25 and dense backends must serve the same corpus")
        self.bm25, self.dense, self.options = bm25, dense, options
        self.passages = bm25.passages
        self.cache_key = options_key("hybrid", bm25.cache_key, dense.cache_key, options.model_dump())
        self._start_worker()

    def retrieve(self, queries: list[str], top_k: int) -> list[list[Hit]]:
        """Top-k passages per query by fused score, best first."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        o = self.options
        if o.fusion == "zscore":
            similarities = self.dense.similarities(queries)  # [B, N_docs]
            results = []
            for query, cosine in zip(queries, similarities, strict=True):
                ranked = zscore_fusion(
                    self.bm25.scores(query), cosine, (o.bm25_weight, o.dense_weight), top_k
                )
                results.append([self._hit(doc, score) for doc, score in ranked])
            return results
        depth = max(top_k, o.depth)
        lexical = self.bm25.retrieve(queries, depth)
        semantic = self.dense.retrieve(queries, depth)
        return [
            reciprocal_rank_fusion([a, b], [o.bm25_weight, o.dense_weight], o.rrf_k, top_k)
            for a, b in zip(lexical, semantic, strict=True)
        ]

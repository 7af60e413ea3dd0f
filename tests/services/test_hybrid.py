"""Hybrid retrieval: reciprocal-rank fusion by hand, and a hybrid proxy serving bm25, dense and hybrid."""

from __future__ import annotations

import statistics

import httpx
import numpy as np
import pytest

from services.search_proxy.app import create_app
from services.search_proxy.backends import Hit
from services.search_proxy.backends.hybrid import HybridBackend, reciprocal_rank_fusion, zscore_fusion
from services.search_proxy.settings import HybridSettings, ProxySettings
from tests.services.conftest import serve, write_corpus


def _hits(*ids: str) -> list[Hit]:
    return [Hit(i, f"title {i}", f"text {i}", 0.0) for i in ids]


def test_rrf_by_hand():
    """k = 60; ranks from 1.

    a: 1/61 + 1/62 = 0.016393 + 0.016129 = 0.032522      (1st in bm25, 2nd in dense)
    c: 1/63 + 1/61 = 0.015873 + 0.016393 = 0.032266      (3rd in bm25, 1st in dense)
    b: 1/62 = 0.016129;  d: 1/63 = 0.015873
    """
    fused = reciprocal_rank_fusion([_hits("a", "b", "c"), _hits("c", "a", "d")], [1.0, 1.0], 60.0, top_k=4)
    assert [(h.id, round(h.score, 6)) for h in fused] == [
        ("a", 0.032522),
        ("c", 0.032266),
        ("b", 0.016129),
        ("d", 0.015873),
    ]
    assert fused[1].title == "title c"  # the passage itself is carried through
    # weights: dense counted twice -> c: 2/61 + 1/63 = 0.048660 beats a: 1/61 + 2/62 = 0.048652
    weighted = reciprocal_rank_fusion([_hits("a", "b", "c"), _hits("c", "a", "d")], [1.0, 2.0], 60.0, top_k=2)
    assert [(h.id, round(h.score, 6)) for h in weighted] == [("c", 0.04866), ("a", 0.048652)]
    # equal fused scores: the bm25 ranking's passage first
    assert [h.id for h in reciprocal_rank_fusion([_hits("x"), _hits("y")], [1.0, 1.0], 60.0, 2)] == ["x", "y"]


def test_zscore_fusion_by_hand():
    """bm25 = [2, 0, 1, 1]: mean 1, std sqrt(2/4) = 0.707107, z = [1.414214, -1.414214, 0, 0]
    cosine = [.1, .5, .3, .3]: mean .3, std sqrt(.08/4) = 0.141421, z = [-1.414214, 1.414214, 0, 0]
    weights (1, 0.5): fused = [0.707107, -0.707107, 0, 0] -> d0, then the tie d2, d3 in corpus order, then d1.
    """
    ranked = zscore_fusion(np.array([2.0, 0, 1, 1]), np.array([0.1, 0.5, 0.3, 0.3]), (1.0, 0.5), top_k=4)
    assert [(d, round(s, 6)) for d, s in ranked] == [(0, 0.707107), (2, 0.0), (3, 0.0), (1, -0.707107)]
    # a query sharing no word with any passage: BM25 is flat (z = 0), the dense side decides alone
    assert [d for d, _ in zscore_fusion(np.zeros(4), np.array([0.1, 0.5, 0.3, 0.2]), (1.0, 0.5), 2)] == [1, 2]


@pytest.fixture(scope="module")
def hybrid_proxy(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("hybrid")
    settings = ProxySettings.model_validate(
        {
            "backend": "hybrid",
            "corpus": write_corpus(root / "c.jsonl"),
            "cache": {"dir": root / "cache"},
            "hybrid": {"depth": 5, "rrf_k": 60},
        }
    )
    app = create_app(settings)
    with serve(app) as server:
        server.backends = app.state.proxy.backends  # the loaded bm25 and dense backends, for direct checks
        yield server


def test_hybrid_proxy_fuses_its_two_backends(hybrid_proxy):
    health = httpx.get(f"{hybrid_proxy.url}/healthz").json()
    assert health["backends"] == ["bm25", "dense", "hybrid"]
    queries = ["who climbed the highest mountain first", "Shakespeare tragedy about a prince"]

    def ask(backend: str, top_k: int) -> list[list[dict]]:
        body = {"queries": queries, "top_k": top_k, "backend": backend}
        return [r["hits"] for r in httpx.post(f"{hybrid_proxy.url}/search", json=body).json()["results"]]

    bm25, dense, hybrid = ask("bm25", 5), ask("dense", 5), ask("hybrid", 3)
    for lexical, semantic, fused in zip(bm25, dense, hybrid, strict=True):
        # slow RRF over the two rankings the proxy serves for the components (depth 5)
        score: dict[str, float] = {}
        for ranking in (lexical, semantic):
            for rank, hit in enumerate(ranking, start=1):
                score[hit["id"]] = score.get(hit["id"], 0.0) + 1.0 / (60 + rank)
        assert [h["score"] for h in fused] == pytest.approx(sorted(score.values(), reverse=True)[:3])
        assert [h["id"] for h in fused] == sorted(score, key=lambda i: -score[i])[:3]
    assert hybrid[0][0]["id"] in ("p3", "p9")  # the two Everest passages


def test_zscore_hybrid_against_a_slow_computation(hybrid_proxy):
    bm25, dense = hybrid_proxy.backends["bm25"], hybrid_proxy.backends["dense"]
    hybrid = HybridBackend(bm25, dense, HybridSettings(fusion="zscore", bm25_weight=1.0, dense_weight=0.25))
    queries = ["who climbed the highest mountain first", "a play by Shakespeare"]
    cosines = dense.encode(queries) @ dense.embeddings.T
    for query, cosine, hits in zip(queries, cosines, hybrid.retrieve(queries, top_k=3), strict=True):
        lexical = [float(x) for x in bm25.scores(query)]
        semantic = [float(x) for x in cosine]

        def z(xs: list[float]) -> list[float]:
            mean, std = statistics.fmean(xs), statistics.pstdev(xs)
            return [(x - mean) / (std + 1e-9) for x in xs]

        fused = [a + 0.25 * b for a, b in zip(z(lexical), z(semantic), strict=True)]
        best = sorted(range(len(fused)), key=lambda i: (-fused[i], i))[:3]
        assert [h.id for h in hits] == [bm25.passages[i].id for i in best]
        assert [h.score for h in hits] == pytest.approx([fused[i] for i in best], abs=1e-6)

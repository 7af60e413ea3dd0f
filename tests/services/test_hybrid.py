"""Hybrid retrieval: reciprocal-rank fusion by hand, and a hybrid proxy serving bm25, dense and hybrid."""

from __future__ import annotations

import httpx
import pytest

from services.search_proxy.app import create_app
from services.search_proxy.backends import Hit
from services.search_proxy.backends.hybrid import reciprocal_rank_fusion
from services.search_proxy.settings import ProxySettings
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
    with serve(create_app(settings)) as server:
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

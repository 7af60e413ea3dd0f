"""The bm25 backend: scores checked by hand and against a slow textbook BM25, the saved index reloaded."""

from __future__ import annotations

import math
import re
from pathlib import Path

import bm25s
import numpy as np
import pytest
from bm25s.stopwords import STOPWORDS_EN

from services.search_proxy.backends.bm25 import Bm25Backend, passage_text
from services.search_proxy.corpus import Passage, read_corpus
from services.search_proxy.settings import Bm25Settings
from tests.services.conftest import write_corpus


def _backend(texts: list[str], **options) -> Bm25Backend:
    passages = [Passage(f"d{i}", "", text) for i, text in enumerate(texts)]
    return Bm25Backend(passages, Bm25Settings(**options))


def test_scores_by_hand():
    """Lucene BM25 (k1 = 1.5, b = 0.75) on two passages, arithmetic written out.

    A = "apple banana" (|A| = 2), B = "apple apple cherry" (|B| = 3); N = 2, avgdl = 2.5.
    idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5));  tf part = tf / (tf + k1 (1 - b + b |d| / avgdl)).
    cherry: df = 1, idf = ln(1 + 1.5 / 1.5) = ln 2 = 0.693147
            B: 1 - .75 + .75 * 3 / 2.5 = 1.15;  1 / (1 + 1.5 * 1.15) = 1 / 2.725 = 0.366972  -> 0.254366
    apple:  df = 2, idf = ln(1 + 0.5 / 2.5) = ln 1.2 = 0.182322
            A: 1 - .75 + .75 * 2 / 2.5 = 0.85;  1 / (1 + 1.275) = 0.439560                 -> 0.080142
            B: 2 / (2 + 1.725) = 0.536913                                                  -> 0.097891
    """
    backend = _backend(["apple banana", "apple apple cherry"], k1=1.5, b=0.75)
    [cherry], [apple], [both] = (backend.retrieve([q], top_k=5) for q in ["cherry", "apple", "apple cherry"])
    assert [h.id for h in cherry] == ["d1"]  # A shares no term with the query: left out
    assert cherry[0].score == pytest.approx(0.254366, abs=1e-5)
    assert [(h.id, round(h.score, 5)) for h in apple] == [("d1", 0.09789), ("d0", 0.08014)]
    assert [(h.id, round(h.score, 5)) for h in both] == [
        ("d1", round(0.254366 + 0.097891, 5)),
        ("d0", 0.08014),
    ]
    # a repeated query term counts twice (bm25s's rule): 2 x 0.254366
    assert backend.retrieve(["cherry cherry"], 1)[0][0].score == pytest.approx(2 * 0.254366, abs=1e-5)
    assert backend.retrieve(["zebra", "the of and"], 3) == [[], []]  # no shared term / only stop words


def _slow_bm25(docs: list[list[str]], query: list[str], k1: float, b: float) -> list[float]:
    """Textbook Lucene BM25, one passage and one query term at a time."""
    n, avgdl = len(docs), sum(map(len, docs)) / len(docs)
    scores = []
    for doc in docs:
        score = 0.0
        for term in query:
            df = sum(term in other for other in docs)
            if df:
                tf = doc.count(term)
                score += (
                    math.log(1 + (n - df + 0.5) / (df + 0.5))
                    * tf
                    / (tf + k1 * (1 - b + b * len(doc) / avgdl))
                )
        scores.append(score)
    return scores


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"\b\w\w+\b", text.lower()) if w not in STOPWORDS_EN]


@pytest.mark.parametrize(("k1", "b"), [(0.9, 0.4), (1.5, 0.75), (1.2, 0.0)])
def test_ranking_matches_a_slow_textbook_bm25(tiny_corpus: Path, k1: float, b: float):
    passages = read_corpus(tiny_corpus)
    backend = Bm25Backend(passages, Bm25Settings(k1=k1, b=b))
    docs = [_words(passage_text(p)) for p in passages]
    queries = [
        "Who wrote the tragedy Hamlet?",
        "capital city of Japan",
        "first climbed Everest",
        "tragedy Shakespeare",
    ]
    for query, hits in zip(queries, backend.retrieve(queries, top_k=4), strict=True):
        slow = _slow_bm25(docs, _words(query), k1, b)
        # best score first, ties by corpus order, zero scores left out
        expected = sorted((i for i, s in enumerate(slow) if s > 0), key=lambda i: (-slow[i], i))[:4]
        assert [h.id for h in hits] == [passages[i].id for i in expected]
        assert [h.score for h in hits] == pytest.approx([slow[i] for i in expected], rel=1e-5)


def test_same_scores_as_bm25s_retrieve(tiny_corpus: Path):
    backend = Bm25Backend(read_corpus(tiny_corpus), Bm25Settings())
    queries = ["capital of Peru", "Shakespeare tragedy", "Everest"]
    tokens = bm25s.tokenize(queries, stopwords="en", return_ids=False, show_progress=False)
    assert [backend.tokenize(q) for q in queries] == tokens
    reference = backend.retriever.retrieve(tokens, k=2, show_progress=False)
    ours = backend.retrieve(queries, top_k=2)
    np.testing.assert_allclose([[h.score for h in hits] for hits in ours], reference.scores, rtol=1e-6)


def test_equal_scores_keep_corpus_order():
    backend = _backend(["red fox", "blue whale", "red fox", "red fox"])
    assert [h.id for h in backend.retrieve(["fox"], top_k=2)[0]] == ["d0", "d2"]


def test_index_is_saved_and_reloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    corpus = write_corpus(tmp_path / "c.jsonl")
    passages = read_corpus(corpus)
    first = Bm25Backend(passages, Bm25Settings(), index_root=tmp_path / "index", fingerprint="f1")
    other_corpus = Bm25Backend(passages, Bm25Settings(), fingerprint="f2")
    assert other_corpus.cache_key != first.cache_key  # result-cache entries of another corpus never match
    saved = list((tmp_path / "index").iterdir())
    assert len(saved) == 1 and (saved[0] / "params.index.json").is_file()

    def no_indexing(*args, **kwargs):
        raise AssertionError("the saved index should have been loaded")

    monkeypatch.setattr(bm25s.BM25, "index", no_indexing)
    again = Bm25Backend(passages, Bm25Settings(), index_root=tmp_path / "index", fingerprint="f1")
    assert again.retrieve(["Everest"], 3) == first.retrieve(["Everest"], 3)
    with pytest.raises(AssertionError, match="saved index"):  # other options: a different index
        Bm25Backend(passages, Bm25Settings(k1=2.0), index_root=tmp_path / "index", fingerprint="f1")


def test_bad_arguments():
    backend = _backend(["a passage"])
    with pytest.raises(ValueError, match="top_k must be >= 1, got 0"):
        backend.retrieve(["passage"], 0)

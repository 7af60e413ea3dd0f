"""The field's own search clients against a real proxy, at their real batch sizes, over the shipped corpus.

The proxy is `python -m services.search_proxy` with default settings (`start_proxy`: a subprocess on
127.0.0.1) serving BM25 over ../shared/data/corpus/wiki_passages.jsonl.gz, as a new user would start it.
The clients below are written here from the behaviour their projects ship (read, not copied):

- Search-R1 (`search_r1/llm_agent/generation.py`: `batch_search`, `_batch_search`, `_passages2string`).
  Per agent turn ONE POST to /retrieve holding every active rollout's query, `topk` 3 (`retriever.topk`
  in its train_grpo.sh), `return_scores` true, no timeout and no status check; then
  `response.json()['result']` (a KeyError when the proxy refuses), per query a list of
  `{'document': {'contents'}, 'score'}`, rendered `Doc {i}(Title: {first line of contents}) {rest}\\n`.
  Its shipped GRPO run (train_batch_size 512 x n_agent 5) sends 2,560 queries in its first turn. When no
  rollout searched in a turn it still posts, with an empty list. Its server answers without scores with
  the document dicts themselves (`{'id', 'contents'}`).
- verl's search tool (`verl/tools/utils/search_r1_like_utils.py`: `call_search_api`,
  `perform_single_search_batch`). One POST per tool call with that call's query list, topk 3,
  return_scores true, JSON Content-Type and Accept headers, a 30 s timeout; 500/502/503/504 and
  connection errors are retried after 1 s x attempt, other 4xx fail. Up to 120 tool calls at once
  (`num_workers` / `rate_limit` 120 in its search tool config). Rendering: `Doc {i} (Title: ...)\\n{text}\\n\\n`
  per document, stripped, queries joined by `\\n---\\n`.
- verl-tool's `search_retrieval` tool: one query per POST, topk 3, return_scores true, 30 s timeout;
  a document's text from `doc['document']['contents']`, or `doc['contents']` when there is no score.

Expected answers are computed here, independently of the proxy's code: bm25s's own `get_scores` on an
index this file builds with the proxy's documented BM25 settings (k1 0.9, b 0.4, lucene, English stop
words, title + text), and each passage's `contents`, title and text read straight from the corpus file.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
import pytest
import requests

from services.search_proxy.launch import ProxyProcess, start_proxy
from services.search_proxy.settings import ProxySettings
from tests.services.conftest import metric

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
CORPUS = SHARED / "corpus" / "wiki_passages.jsonl.gz"
QA_FILES = ["train_stage2", "hotpotqa_500", "2wiki_500", "musique_500", "bamboogle"]
TOPK = 3  # Search-R1's retriever.topk, verl's and verl-tool's default

pytestmark = pytest.mark.skipif(not CORPUS.is_file(), reason=f"needs the shared corpus at {CORPUS}")


# --- the clients, as their projects behave ---------------------------------------------------------------


def search_r1_batch_search(url: str, queries: list[str], *, return_scores: bool = True) -> list[Any]:
    """Search-R1's `batch_search` up to the parsed result: one POST, no timeout, no status check."""
    payload = {"queries": queries, "topk": TOPK, "return_scores": return_scores}
    return requests.post(f"{url}/retrieve", json=payload).json()["result"]


def search_r1_observation(docs: list[dict[str, Any]]) -> str:
    """Search-R1's `_passages2string`: the title line of `contents`, then the rest, per scored document."""
    out = []
    for rank, doc in enumerate(docs, start=1):
        title, _, text = doc["document"]["contents"].partition("\n")
        out.append(f"Doc {rank}(Title: {title}) {text}\n")
    return "".join(out)


def verl_call_search_api(url: str, queries: list[str]) -> dict[str, Any]:
    """verl's `call_search_api`: retry 5xx and connection errors after 1 s x attempt (10 tries), else raise."""
    payload = {"queries": queries, "topk": TOPK, "return_scores": True}
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    for attempt in range(10):
        try:
            response = requests.post(f"{url}/retrieve", headers=headers, json=payload, timeout=30)
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(attempt + 1)
            continue
        if response.status_code in (500, 502, 503, 504):
            time.sleep(attempt + 1)
            continue
        response.raise_for_status()
        return response.json()
    raise RuntimeError(f"verl-like client: no answer for {queries!r} after 10 attempts")


def verl_search_batch(url: str, queries: list[str]) -> tuple[str, dict[str, Any]]:
    """verl's `perform_single_search_batch`: the text the policy reads, and the parsed API response."""
    api_response = verl_call_search_api(url, queries)
    per_query = []
    for docs in api_response["result"]:
        parts = []
        for rank, doc in enumerate(docs, start=1):
            title, _, text = doc["document"]["contents"].partition("\n")
            parts.append(f"Doc {rank} (Title: {title})\n{text}\n\n")
        per_query.append("".join(parts).strip())
    return "\n---\n".join(per_query), api_response


def verl_tool_search_retrieval(url: str, query: str) -> list[dict[str, Any]]:
    """verl-tool's `search_retrieval` `_batch_search([query])`: one query, 30 s timeout, raise on errors."""
    payload = {"queries": [query], "topk": TOPK, "return_scores": True}
    response = requests.post(f"{url}/retrieve", json=payload, timeout=30)
    response.raise_for_status()
    return response.json()["result"]


# --- what the answers must be ------------------------------------------------------------------------------


class Reference:
    """BM25 scores of every passage by bm25s's own `get_scores`, on an index built here."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.index_of = {row["id"]: i for i, row in enumerate(rows)}
        texts = [f"{row['title']}\n{row['text']}" for row in rows]
        self.bm25 = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
        self.bm25.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
        self._scores: dict[str, np.ndarray] = {}

    def scores(self, query: str) -> np.ndarray:
        """[N_passages] BM25 scores of one query (memoised: the large requests repeat queries)."""
        found = self._scores.get(query)
        if found is None:
            tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]
            known = [t for t in tokens if t in self.bm25.vocab_dict]
            found = self.bm25.get_scores(known) if known else np.zeros(len(self.rows), dtype=np.float32)
            self._scores[query] = found
        return found

    def check(self, query: str, docs: list[dict[str, Any]], *, scored: bool) -> None:
        """`docs` (as the client parsed them) are a top-TOPK of the query by BM25 score, best first."""
        full = self.scores(query)
        matching = int((full > 0).sum())
        assert len(docs) == min(TOPK, matching), (query, docs)
        picked = []
        for doc in docs:
            document = doc["document"] if scored else doc
            i = self.index_of[document["id"]]
            assert document["contents"] == self.rows[i]["contents"]
            if scored:
                assert doc["score"] == pytest.approx(float(full[i]), rel=1e-5, abs=1e-5)
            picked.append(i)
        got = full[picked]
        assert np.all(got[:-1] >= got[1:] - 1e-5), (query, got)  # best first
        if picked and matching > len(picked):  # nothing left out scores higher than what was returned
            rest = np.delete(full, picked)
            assert rest.max() <= got.min() + 1e-5, (query, got, rest.max())


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    with gzip.open(CORPUS, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def reference(rows: list[dict[str, Any]]) -> Reference:
    return Reference(rows)


@pytest.fixture(scope="module")
def questions() -> list[str]:
    """The 9,773 distinct questions of the shipped QA files, in file order."""
    seen: dict[str, None] = {}
    for name in QA_FILES:
        with (SHARED / "qa" / f"r1searcher_{name}.jsonl").open(encoding="utf-8") as handle:
            for line in handle:
                seen.setdefault(json.loads(line)["question"].strip(), None)
    return list(seen)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """The proxy as the issue's user started it: bm25 over the corpus, every other setting its default."""
    settings = ProxySettings(backend="bm25", corpus=CORPUS, cache={"dir": tmp_path_factory.mktemp("cache")})
    with start_proxy(settings) as running:
        yield running


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


# --- Search-R1: one large request per turn -----------------------------------------------------------------


@pytest.mark.parametrize("return_scores", [True, False], ids=["scores", "no_scores"])
def test_search_r1_grpo_batch_in_one_request(proxy, reference, rows, questions, return_scores: bool):
    queries = questions[:2560]  # train_batch_size 512 x n_agent 5: every rollout's first search
    result = search_r1_batch_search(proxy.url, queries, return_scores=return_scores)
    assert len(result) == len(queries)
    for query, docs in zip(queries, result, strict=True):
        reference.check(query, docs, scored=return_scores)
    if return_scores:  # the observation the policy reads, from the corpus's own title and text
        for docs in result[:200]:
            expected = "".join(
                f'Doc {rank}(Title: "{rows[reference.index_of[d["document"]["id"]]]["title"]}") '
                f"{rows[reference.index_of[d['document']['id']]]['text']}\n"
                for rank, d in enumerate(docs, start=1)
            )
            assert search_r1_observation(docs) == expected
    else:  # without scores Search-R1's server answers the document dicts themselves
        assert all(set(doc) == {"id", "contents"} for docs in result for doc in docs)


def test_search_r1_turn_without_searches_posts_an_empty_list(proxy):
    assert search_r1_batch_search(proxy.url, []) == []


@pytest.mark.slow
def test_16k_queries_in_one_request_with_bounded_memory(proxy, reference, questions):
    """1,024 prompts x 16 samples in one POST; the proxy's peak memory grows by less than half the answer."""
    queries = [questions[i % len(questions)] for i in range(16_384)]  # 9,773 distinct, then repeats
    payload = {"queries": queries, "topk": TOPK, "return_scores": True}
    # A first multi-chunk request warms the process (allocator arenas, SQLite's page cache, lazy imports:
    # ~10 MB once), so the measurement below is what this request itself costs.
    assert len(search_r1_batch_search(proxy.url, questions[-1024:])) == 1024
    Path(f"/proc/{proxy.pid}/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = _kib(proxy.pid, "VmHWM")
    response = requests.post(f"{proxy.url}/retrieve", json=payload)
    growth_kib = _kib(proxy.pid, "VmHWM") - before
    assert response.status_code == 200 and response.headers.get("transfer-encoding") == "chunked"
    result = response.json()["result"]
    assert len(result) == len(queries)
    for query, docs in zip(queries, result, strict=True):
        reference.check(query, docs, scored=True)
    # Answered whole (batching.max_queries >= 16,384: one chunk) the peak grows by ~270 MB for this
    # 33 MB answer; chunked and streamed, by a few MB (the request's own queries and a few chunks).
    assert growth_kib * 1024 < len(response.content) / 2, (growth_kib, len(response.content))
    assert metric(proxy.url, "search_proxy_inflight_requests") == 0


# --- verl and verl-tool: many concurrent small requests -----------------------------------------------------


def test_verl_and_verl_tool_many_concurrent_small_requests(proxy, reference, rows, questions):
    calls: list[list[str]] = []  # verl tool calls: 1 to 3 queries each; verl-tool: always 1
    for i in range(480):
        size = 1 + i % 3 if i % 2 == 0 else 1
        calls.append([questions[(7 * i + j) % len(questions)] for j in range(size)])

    def one_call(i: int) -> tuple[int, Any]:
        if i % 2 == 0:
            return i, verl_search_batch(proxy.url, calls[i])
        return i, verl_tool_search_retrieval(proxy.url, calls[i][0])

    with ThreadPoolExecutor(max_workers=120) as pool:  # verl's num_workers / rate_limit
        answers = dict(pool.map(one_call, range(len(calls))))

    for i, queries in enumerate(calls):
        if i % 2 == 0:
            text, api_response = answers[i]
            assert len(api_response["result"]) == len(queries)
            for query, docs in zip(queries, api_response["result"], strict=True):
                reference.check(query, docs, scored=True)
            # the text the policy reads, rebuilt from the corpus's own title and text of those passages
            expected = "\n---\n".join(
                "".join(
                    f'Doc {rank} (Title: "{rows[reference.index_of[d["document"]["id"]]]["title"]}")\n'
                    f"{rows[reference.index_of[d['document']['id']]]['text']}\n\n"
                    for rank, d in enumerate(docs, start=1)
                ).strip()
                for docs in api_response["result"]
            )
            assert text == expected
        else:
            (docs,) = answers[i]
            reference.check(queries[0], docs, scored=True)
    assert metric(proxy.url, "search_proxy_requests_total", endpoint="/retrieve", status="503") == 0


def _no_ties(full: np.ndarray) -> bool:
    """Whether the top TOPK + 1 positive scores are distinct (so the top TOPK is one exact list)."""
    top = np.sort(full[full > 0])[::-1][: TOPK + 1]
    return bool(np.all(np.diff(top) < -1e-5))

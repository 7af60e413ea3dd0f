"""Demonstrations from real QA data: search with the question, read the passages, answer.

For each training question the demonstrated agent thinks, searches once with the question itself as the
query (the search proxy's BM25 backend over the corpus, run in process: the very hits a rollout would get),
and answers with the gold alias that a retrieved passage contains. A question whose top-k passages hold no
gold alias (normalised as the F1 scorer normalises answers) is dropped: a demonstration must not teach
answering from passages that do not hold the answer. The rows have the layout of the built-in world's
demonstrations (`igpo_rlhf.world.demos`), so `demo_token_segments` renders them with any protocol.

The demonstration row layout (shared by both kinds): `{"question", ..., "steps": [{"think", "query",
"results"}, ..., {"think", "answer"}]}`; `render_demo` / `demo_token_segments` turn a row into text / token
segments exactly as the rollout loop builds a trajectory, and `BM25Search` is the retriever both use.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from igpo_rlhf.rewards import normalize_answer
from igpo_rlhf.rollout.trajectory import PromptItem

if TYPE_CHECKING:
    from igpo_rlhf.rollout.protocols import AgentProtocol
    from services.search_proxy.settings import Bm25Settings

SEARCH_THINK = "I need to look this up."
ANSWER_THINK = "The passage about {title} answers it."


def corpus_search(corpus: str | Path, bm25: Bm25Settings | None = None) -> BM25Search:
    """The proxy's BM25 backend over a passage corpus file (.jsonl or .jsonl.gz), in process."""
    from services.search_proxy.corpus import read_corpus

    rows = [{"id": p.id, "title": p.title, "text": p.text} for p in read_corpus(corpus)]
    return BM25Search(rows, bm25)


def gold_in_passages(golds: Sequence[str], hits: list[dict]) -> tuple[str, dict] | None:
    """(alias, hit): the first hit (best first) whose normalised title + text holds a normalised gold alias."""
    aliases = [(g, f" {normalize_answer(g)} ") for g in golds if normalize_answer(g)]
    for hit in hits:
        text = f" {normalize_answer(hit.get('title', '') + ' ' + hit['text'])} "
        for alias, needle in aliases:
            if needle in text:
                return alias, hit
    return None


def question_key(question: str) -> str:
    """A question as compared across files (held-out questions must not be trained on)."""
    return normalize_answer(question)


def qa_demos(
    items: Sequence[PromptItem],
    search: BM25Search,
    *,
    top_k: int,
    max_demos: int,
    seed: int,
    exclude: Collection[str] = (),
) -> tuple[list[dict], dict]:
    """Up to `max_demos` demonstrations from `items` in a seeded order, and how many questions were dropped.

    `exclude`: `question_key`s of held-out questions, never demonstrated."""
    if max_demos < 1:
        raise ValueError(f"max_demos={max_demos}: expected >= 1")
    exclude = set(exclude)
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    demos: list[dict] = []
    tried = missed = held_out = 0
    for i in order:
        if len(demos) >= max_demos:
            break
        item = items[i]
        if question_key(item.question) in exclude:
            held_out += 1
            continue
        tried += 1
        query = item.question.strip()
        hits = search.search([query], top_k)[0]
        found = gold_in_passages(item.golds, hits)
        if found is None:
            missed += 1
            continue
        alias, hit = found
        title = hit.get("title") or "this"
        steps = [
            {"think": SEARCH_THINK, "query": query, "results": hits},
            {"think": ANSWER_THINK.format(title=title), "answer": alias},
        ]
        demos.append({"question": item.question, "answers": list(item.golds), "steps": steps})
    stats = {
        "demos": len(demos),
        "questions_tried": tried,
        "dropped_answer_not_retrieved": missed,
        "skipped_held_out": held_out,
        "retrieval_hit_rate": round((tried - missed) / max(tried, 1), 3),
        "search_top_k": top_k,
    }
    return demos, stats


class BM25Search:
    """Top-k passages per query from the search proxy's own BM25 backend, in process.

    Same index, tokenisation and scoring as the proxy serving this corpus with the same `bm25` settings,
    so the demonstrated observations are what the rollout loop receives. Hits are the proxy's JSON form,
    `{"id", "title", "text", "score"}`; `search` is what `run_rollouts` calls a search client by."""

    def __init__(self, corpus: list[dict], bm25: Bm25Settings | None = None) -> None:
        from services.search_proxy.backends.bm25 import Bm25Backend
        from services.search_proxy.corpus import Passage
        from services.search_proxy.settings import Bm25Settings

        passages = [Passage(row["id"], row["title"], row["text"]) for row in corpus]
        self.backend = Bm25Backend(passages, bm25 if bm25 is not None else Bm25Settings())

    def search(self, queries: list[str], top_k: int) -> list[list[dict]]:
        """One hit list per query, best first."""
        return [[hit.to_dict() for hit in hits] for hits in self.backend.retrieve(list(queries), top_k)]


def render_demo(demo: dict, protocol: AgentProtocol) -> list[tuple[str, str]]:
    """A demo as (kind, text) segments in `protocol`: kind is prompt | turn | observation.

    Turns are what the policy generates (trained on); prompt and observations are context only."""
    segments = [("prompt", protocol.prompt_text(demo["question"]))]
    for step in demo["steps"]:
        if "answer" in step:
            segments.append(("turn", protocol.demo_turn_text(think=step["think"], answer=step["answer"])))
        else:
            queries = [step["query"]]
            segments.append(("turn", protocol.demo_turn_text(think=step["think"], queries=queries)))
            segments.append(("observation", protocol.observation_text([step["results"]], queries=queries)))
    return segments


def demo_token_segments(
    demo: dict, protocol: AgentProtocol, tokenizer, max_obs_tokens: int | None
) -> list[tuple[str, list[int]]]:
    """A demo as (kind, token ids) segments, each tokenised on its own exactly as the rollout loop builds a
    trajectory: the prompt is `protocol.prompt_ids`, a turn is its text encoded without special tokens,
    an observation is `protocol.observation_ids` of the stored hits (cut to `max_obs_tokens`)."""
    out: list[tuple[str, list[int]]] = []
    searches = iter(step for step in demo["steps"] if "answer" not in step)
    for kind, text in render_demo(demo, protocol):
        if kind == "prompt":
            out.append((kind, protocol.prompt_ids(demo["question"])))
        elif kind == "observation":
            step = next(searches)
            ids = protocol.observation_ids(
                [step["results"]], max_tokens=max_obs_tokens, queries=[step["query"]]
            )
            out.append((kind, ids))
        else:
            out.append((kind, tokenizer.encode(text, add_special_tokens=False)))
    return out

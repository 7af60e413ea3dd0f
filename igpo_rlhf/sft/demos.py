"""Demonstrations from real QA data: search with the question, read the passages, answer.

For each training question the demonstrated agent thinks, searches once with the question itself as the
query (the search proxy's BM25 backend over the corpus, run in process: the very hits a rollout would get),
and answers with the gold alias that a retrieved passage contains. A question whose top-k passages hold no
gold alias (normalised as the F1 scorer normalises answers) is dropped: a demonstration must not teach
answering from passages that do not hold the answer. The rows have the layout of the built-in world's
demonstrations (`igpo_rlhf.world.demos`), so `demo_token_segments` renders them with any protocol.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from igpo_rlhf.rewards import normalize_answer
from igpo_rlhf.rollout.trajectory import PromptItem
from igpo_rlhf.world.demos import BM25Search

if TYPE_CHECKING:
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

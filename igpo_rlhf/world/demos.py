"""Demonstration trajectories over the built-in world: what a good search agent does on a question.

For each hop of a question the agent thinks, searches for the hop's fact with a short keyword query
(`Relation.query`, e.g. "Brimvale Foundry founded by"), reads the real retrieval results, and on the last
turn answers. A demo row stores the steps protocol-free (thinking, query, the retrieved passages, answer);
`igpo_rlhf.sft.demos.render_demo` turns it into text segments with an agent protocol (`igpo_rlhf.rollout.protocols`), the
observation rendered by the protocol's own `observation_text` on the stored results, exactly what the
rollout loop appends after a search.

Retrieval is the search proxy's BM25 backend run in process (`igpo_rlhf.sft.demos.BM25Search`); the rows are
rendered into tokens with a protocol by `igpo_rlhf.sft.demos.demo_token_segments`.
"""

from __future__ import annotations

import json
import random
from typing import TYPE_CHECKING

from igpo_rlhf.sft.demos import BM25Search
from igpo_rlhf.world.world import RELATIONS, Fact, Question, World, fact_passage_ids

if TYPE_CHECKING:
    from services.search_proxy.settings import Bm25Settings


def demo_steps(
    q: Question,
    search: BM25Search,
    gold_ids: dict[Fact, str],
    top_k: int,
    *,
    brief_final: bool = False,
) -> list[dict]:
    """The turns of a good agent on `q`: one search per hop, then the answer.

    Turn k searches for hop k's fact about path[k]; its thinking restates the fact just read (from the
    previous observation) and names what is needed next, so every entity in a query has been seen. The
    final turn restates the last fact, or with `brief_final` answers straight from the last observation:
    the model then learns to read the answer off a passage right where an answer opens, which is where
    IGPO's belief probe asks for it (log b after an observation)."""
    steps: list[dict] = []
    said = ""
    for rel_name, subject, obj in zip(q.chain, q.path[:-1], q.path[1:], strict=True):
        rel = RELATIONS[rel_name]
        query = rel.query.format(x=subject)
        results = search.search([query], top_k)[0]
        gold = gold_ids[rel_name, subject]
        ranks = [k for k, hit in enumerate(results, start=1) if hit["id"] == gold]
        steps.append(
            {
                "think": f"{said}I need to find {rel.need.format(x=subject)}.",
                "query": query,
                "results": results,
                "gold_id": gold,
                "gold_rank": ranks[0] if ranks else None,
            }
        )
        said = rel.fact.format(x=subject, y=obj) + ". Now "
    if brief_final:
        think = "The last passage answers the question."
    else:
        fact = RELATIONS[q.chain[-1]].fact.format(x=q.path[-2], y=q.path[-1])
        think = f"{fact}. So the answer is {q.path[-1]}."
    steps.append({"think": think, "answer": q.path[-1]})
    return steps


def flawed_steps(steps: list[dict], q: Question, behaviour: str, rng: random.Random) -> list[dict]:
    """A flawed variant of a good demonstration's `steps`, always ending in a wrong answer:

    - "skip": answer at once with the entity the question names (copied from the question, so nothing
      that is not in the context is taught);
    - "stop": search the first k hops, k drawn from 0..hops-1, then answer with the entity reached (k = 0
      is a skip)."""
    k = rng.randint(0, q.hops - 1) if behaviour == "stop" else 0
    if k == 0:
        return [{"think": f"I know this. The answer is {q.path[0]}.", "answer": q.path[0]}]
    fact = RELATIONS[q.chain[k - 1]].fact.format(x=q.path[k - 1], y=q.path[k])
    return steps[:k] + [{"think": f"{fact}. So the answer is {q.path[k]}.", "answer": q.path[k]}]


def make_demos(
    world: World,
    questions: list[Question],
    rows: list[dict],
    corpus: list[dict],
    top_k: int,
    bm25: Bm25Settings | None = None,
    *,
    skip_frac: float = 0.0,
    stop_frac: float = 0.0,
    seed: int = 0,
) -> tuple[list[dict], dict]:
    """Demo rows for `questions` (rows: their question_row dicts) and retrieval statistics.

    A demo whose search misses its fact passage in the top `top_k` would teach reading an answer that is
    not there, so such questions are left out (counted in the statistics). A seeded share `skip_frac` of
    the demos skips searching and `stop_frac` stops early (`flawed_steps`); each row says which it is
    (`behaviour`: full | skip | stop)."""
    if skip_frac + stop_frac > 1.0:
        raise ValueError(
            f"data.world.demo_skip_frac + demo_stop_frac = {skip_frac + stop_frac:g} is more than 1: they are "
            "shares of the same demonstrations"
        )
    search = BM25Search(corpus, bm25)
    gold_ids = fact_passage_ids(world)
    rng = random.Random(seed + 2)
    demos, n_search, n_rank1, dropped = [], 0, 0, 0
    behaviours = {"full": 0, "skip": 0, "stop": 0}
    for k, (q, row) in enumerate(zip(questions, rows, strict=True)):
        steps = demo_steps(q, search, gold_ids, top_k, brief_final=k % 2 == 1)
        searches = steps[:-1]
        if any(s["gold_rank"] is None for s in searches):
            dropped += 1
            continue
        n_search += len(searches)
        n_rank1 += sum(s["gold_rank"] == 1 for s in searches)
        u = rng.random()
        behaviour = "skip" if u < skip_frac else "stop" if u < skip_frac + stop_frac else "full"
        if behaviour != "full":
            steps = flawed_steps(steps, q, behaviour, rng)
        behaviours[behaviour] += 1
        demos.append({**row, "steps": steps, "behaviour": behaviour})
    stats = {
        "demos": len(demos),
        "behaviours": behaviours,
        "dropped_fact_not_retrieved": dropped,
        "searches": n_search,
        "gold_at_rank1": n_rank1 / max(n_search, 1),
        "search_top_k": top_k,
        "retriever": "search proxy bm25 backend " + json.dumps(search.backend.options.model_dump()),
    }
    return demos, stats

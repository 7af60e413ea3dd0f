"""The multi-turn agent loop: generate a turn, parse it, search, append the observation, repeat.

Every prompt is rolled out `n_samples` times. Each round, all unfinished rollouts generate their next turn
together (in engine calls of `batch_size` rows), then ALL their searches go to the proxy in ONE request,
then each search turn gets its observation appended. A rollout ends (its `finish_reason`):

    answer      the turn holds a well-formed answer
    eos         the turn ended with EOS and no answer (the model stopped without answering)
    max_length  the turn used up `max_total_tokens`, or its observation would not leave room for another
                generated token (the observation is then not appended)
    invalid     the turn is malformed (no call, unclosed tag, bad tool JSON, ...): format penalty
    max_turns   turn `max_turns` is a search: cut off, its search is not run, no observation

checked in this order. Only "answer" has an answer; the others get the format penalty as outcome and keep
their IG rewards (DESIGN.md "Turn rewards"). A failing search (`SearchFailed`) gives every rollout of that
request an error observation and the rollouts continue.

Budgets: turn t may sample min(max_new_tokens, max_total_tokens - tokens so far) tokens; observations are
cut to `max_observation_tokens` (passages cut, framing kept).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from igpo_rlhf.rollout.engine import Engine
from igpo_rlhf.rollout.protocols import Action, AgentProtocol
from igpo_rlhf.rollout.trajectory import PromptItem, Trajectory

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from igpo_rlhf.config import RolloutConfig


class SearchFailed(RuntimeError):
    """A search request failed (service down, timeout, error answer); the message says why."""


class Searcher(Protocol):
    """What the loop needs from a search client (`igpo_rlhf.rollout.searcher.ProxySearcher` over HTTP):
    one hit list per query, best first (hits: dicts with id, title, text, score), or `SearchFailed`."""

    def search(self, queries: list[str], top_k: int) -> list[list[dict[str, Any]]]: ...


@dataclass
class _Rollout:
    """A trajectory being rolled out (becomes a Trajectory when it finishes)."""

    group_id: int
    sample_id: int
    item: PromptItem
    ids: list[int]
    prompt_len: int
    turn_spans: list[tuple[int, int]] = field(default_factory=list)
    obs_spans: list[tuple[int, int]] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    finish: str | None = None
    answer: str | None = None
    pending: tuple[str, ...] = ()  # queries of this round's search turn, awaiting the search request
    n_searches: int = 0
    n_search_errors: int = 0
    generate_seconds: float = 0.0
    search_seconds: float = 0.0


def call_seed(seed: int | None, round_: int, chunk: int) -> int | None:
    """Seed of one engine call, derived from the run's seed, the round (turn) and the batch index."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, round_, chunk]).generate_state(1)[0] & 0x7FFFFFFF)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r}: expected an int >= 1")


def run_rollouts(
    engine: Engine,
    tokenizer: PreTrainedTokenizerBase,
    protocol: AgentProtocol,
    search_client: Searcher,
    prompts: Sequence[PromptItem],
    *,
    n_samples: int,
    max_turns: int,
    max_new_tokens: int,
    max_total_tokens: int,
    max_observation_tokens: int,
    search_top_k: int,
    temperature: float,
    top_p: float,
    top_k: int,
    batch_size: int,
    seed: int | None,
    max_prompt_tokens: int | None = None,
    weights_version: int = 0,
) -> list[Trajectory]:
    """Rolls out every prompt `n_samples` times; trajectories ordered by (group_id, sample_id).

    `search_client.search(queries, top_k) -> list[list[hit]]` (hits: dicts with id, title, text, score)
    raising `SearchFailed` on failure. Trajectory `generate_seconds` / `search_seconds` are each rollout's
    even share of the batched calls it took part in, so they sum over a step to the step's wall times.
    """
    _check_positive(
        n_samples=n_samples,
        max_turns=max_turns,
        max_new_tokens=max_new_tokens,
        max_total_tokens=max_total_tokens,
        max_observation_tokens=max_observation_tokens,
        search_top_k=search_top_k,
        batch_size=batch_size,
    )
    prompt_limit = (
        max_total_tokens - 1 if max_prompt_tokens is None else min(max_prompt_tokens, max_total_tokens - 1)
    )
    rollouts = []
    for g, item in enumerate(prompts):
        if not isinstance(item, PromptItem):
            raise ValueError(f"prompts[{g}] is a {type(item).__name__}; expected a PromptItem")
        ids = protocol.prompt_ids(item.question)
        if len(ids) > prompt_limit:
            raise ValueError(
                f"prompts[{g}] ({item.question[:80]!r}) is {len(ids)} tokens; at most {prompt_limit} fit "
                f"(rollout.max_prompt_tokens / max_total_tokens={max_total_tokens} leaves room to generate)"
            )
        rollouts += [_Rollout(g, s, item, list(ids), len(ids)) for s in range(n_samples)]

    round_ = 0
    while active := [r for r in rollouts if r.finish is None]:
        for chunk_index, start in enumerate(range(0, len(active), batch_size)):
            _generate_turn(
                engine,
                tokenizer,
                protocol,
                active[start : start + batch_size],
                seed=call_seed(seed, round_, chunk_index),
                max_turns=max_turns,
                max_new_tokens=max_new_tokens,
                max_total_tokens=max_total_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
            )
        searching = [r for r in active if r.pending]
        if searching:
            _search_and_observe(
                protocol,
                search_client,
                searching,
                top_k=search_top_k,
                max_observation_tokens=max_observation_tokens,
                max_total_tokens=max_total_tokens,
            )
        round_ += 1
    return [_finish(r, weights_version) for r in rollouts]


def rollouts_for_config(
    engine: Engine,
    tokenizer: PreTrainedTokenizerBase,
    protocol: AgentProtocol,
    search: Searcher,
    prompts: list[PromptItem],
    cfg: RolloutConfig,
    *,
    seed: int | None,
    weights_version: int,
) -> list[Trajectory]:
    """`run_rollouts` with every sampling and length limit taken from the `rollout` config section
    (the hf RolloutActor, the vllm driver-side generator and `igpo make-tiny-model`'s check)."""
    return run_rollouts(
        engine,
        tokenizer,
        protocol,
        search,
        prompts,
        n_samples=cfg.n_samples,
        max_turns=cfg.max_turns,
        max_new_tokens=cfg.max_new_tokens,
        max_total_tokens=cfg.max_total_tokens,
        max_observation_tokens=cfg.max_observation_tokens,
        search_top_k=cfg.search_top_k,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        batch_size=cfg.batch_size,
        seed=seed,
        max_prompt_tokens=cfg.max_prompt_tokens,
        weights_version=weights_version,
    )


def _generate_turn(
    engine: Engine,
    tokenizer: PreTrainedTokenizerBase,
    protocol: AgentProtocol,
    chunk: list[_Rollout],
    *,
    seed: int | None,
    max_turns: int,
    max_new_tokens: int,
    max_total_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
) -> None:
    """One engine call: the next turn of every rollout in `chunk`, appended, parsed, finished or queued to search."""
    budgets = [min(max_new_tokens, max_total_tokens - len(r.ids)) for r in chunk]
    t0 = time.perf_counter()
    generations = engine.generate(
        [r.ids for r in chunk],
        max_new_tokens=budgets,
        stop_strings=protocol.stop_strings,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
    )
    share = (time.perf_counter() - t0) / len(chunk)
    if len(generations) != len(chunk):
        raise RuntimeError(f"the engine returned {len(generations)} generations for {len(chunk)} contexts")
    for r, gen, budget in zip(chunk, generations, budgets, strict=True):
        if not 1 <= len(gen.token_ids) <= budget:
            raise RuntimeError(f"the engine returned {len(gen.token_ids)} tokens for a budget of {budget}")
        r.generate_seconds += share
        start = len(r.ids)
        r.ids.extend(gen.token_ids)
        r.turn_spans.append((start, len(r.ids)))
        action = protocol.parse(tokenizer.decode(gen.token_ids, skip_special_tokens=False))
        r.actions.append(action)
        if action.kind == "answer":
            r.finish, r.answer = "answer", action.answer
        elif gen.finish == "eos":
            r.finish = "eos"
        elif len(r.ids) >= max_total_tokens:
            r.finish = "max_length"
        elif action.kind == "invalid":
            r.finish = "invalid"
        elif len(r.turn_spans) >= max_turns:
            r.finish = "max_turns"
        else:
            r.pending = action.queries


def _search_and_observe(
    protocol: AgentProtocol,
    search_client: Searcher,
    searching: list[_Rollout],
    *,
    top_k: int,
    max_observation_tokens: int,
    max_total_tokens: int,
) -> None:
    """All pending queries in one search request; each rollout gets its observation (or an error one)."""
    queries = [q for r in searching for q in r.pending]
    t0 = time.perf_counter()
    error = None
    try:
        results = search_client.search(queries, top_k)
        if not isinstance(results, list) or len(results) != len(queries):
            got = len(results) if isinstance(results, list) else type(results).__name__
            results, error = (
                None,
                f"the search service returned {got} result lists for {len(queries)} queries",
            )
    except SearchFailed as exc:
        results, error = None, str(exc) or type(exc).__name__
    share = (time.perf_counter() - t0) / len(searching)
    k = 0
    for r in searching:
        n = len(r.pending)
        own = results[k : k + n] if results is not None else None
        k += n
        r.search_seconds += share
        obs = protocol.observation_ids(own, error, max_tokens=max_observation_tokens, queries=list(r.pending))
        r.pending = ()
        if len(r.ids) + len(obs) >= max_total_tokens:
            r.finish = "max_length"
            continue
        start = len(r.ids)
        r.ids.extend(obs)
        r.obs_spans.append((start, len(r.ids)))
        r.n_searches += 1
        r.n_search_errors += error is not None


def _finish(r: _Rollout, weights_version: int) -> Trajectory:
    traj = Trajectory(
        group_id=r.group_id,
        sample_id=r.sample_id,
        question=r.item.question,
        golds=list(r.item.golds),
        meta=dict(r.item.meta),
        token_ids=r.ids,
        prompt_len=r.prompt_len,
        turn_spans=r.turn_spans,
        obs_spans=r.obs_spans,
        actions=r.actions,
        answer=r.answer,
        finish_reason=r.finish,
        n_searches=r.n_searches,
        n_search_errors=r.n_search_errors,
        generate_seconds=r.generate_seconds,
        search_seconds=r.search_seconds,
        weights_version=weights_version,
    )
    traj.validate()
    return traj

"""Micro-batching: concurrent queries merge into one call of a real bm25 backend; duplicates run once.

The backend is a real Bm25Backend wrapped to record its calls (and, where a test needs it, to hold a
call open until the test releases it, so "a call is running" is a fact, not a timing guess).
"""

from __future__ import annotations

import asyncio

import pytest

from services.search_proxy.backends import Hit
from services.search_proxy.backends.bm25 import Bm25Backend
from services.search_proxy.batching import MicroBatcher
from services.search_proxy.corpus import read_corpus
from services.search_proxy.settings import Bm25Settings


class Recorded:
    """A real backend that records each call; `gate`, when set, holds calls until it opens."""

    def __init__(self, inner: Bm25Backend, gate: asyncio.Event | None = None, fail: Exception | None = None):
        self.inner, self.gate, self.fail = inner, gate, fail
        self.name, self.cache_key, self.cache_ttl_s, self.max_concurrent_calls = "bm25", "k", 0.0, 1
        self.calls: list[tuple[list[str], int]] = []
        self.started = asyncio.Event()

    async def search(self, queries: list[str], top_k: int) -> list[list[Hit]]:
        self.calls.append((list(queries), top_k))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return await self.inner.search(queries, top_k)

    async def aclose(self) -> None:
        pass


@pytest.fixture(scope="module")
def bm25(tmp_path_factory: pytest.TempPathFactory) -> Bm25Backend:
    from tests.services.conftest import write_corpus

    return Bm25Backend(read_corpus(write_corpus(tmp_path_factory.mktemp("c") / "c.jsonl")), Bm25Settings())


QUERIES = ["hamlet", "lima peru", "everest", "jazz", "tokyo", "python language", "cell", "macbeth"]


def test_concurrent_queries_make_one_call_with_the_right_answers(bm25: Bm25Backend):
    async def scenario():
        backend = Recorded(bm25)
        batcher = MicroBatcher(backend, window_s=0.05, max_queries=100)
        answers = await asyncio.gather(*(batcher.submit(q, 2) for q in QUERIES))
        await batcher.aclose()
        return backend.calls, answers

    calls, answers = asyncio.run(scenario())
    assert calls == [(QUERIES, 2)]
    assert [a.hits for a in answers] == bm25.retrieve(QUERIES, 2)
    assert all(a.backend_ms > 0 for a in answers)


def test_identical_queries_in_flight_are_answered_once(bm25: Bm25Backend):
    async def scenario():
        gate = asyncio.Event()
        backend = Recorded(bm25, gate)
        batcher = MicroBatcher(backend, window_s=0.0, max_queries=100)
        first = batcher.submit("everest", 3)
        await backend.started.wait()  # "everest" is now in flight
        again = [batcher.submit("everest", 3) for _ in range(4)]  # joins the running call
        queued = [batcher.submit("jazz", 3), batcher.submit("jazz", 3)]  # queued once
        gate.set()
        results = await asyncio.gather(first, *again, *queued)
        await batcher.aclose()
        return backend.calls, results, first, again

    calls, results, first, again = asyncio.run(scenario())
    assert calls == [(["everest"], 3), (["jazz"], 3)]
    assert all(f is first for f in again)
    assert results[0].hits == bm25.retrieve(["everest"], 3)[0]


def test_queries_arriving_during_a_call_leave_together(bm25: Bm25Backend):
    async def scenario():
        gate = asyncio.Event()
        backend = Recorded(bm25, gate)
        batcher = MicroBatcher(backend, window_s=0.0, max_queries=100)
        futures = [batcher.submit(QUERIES[0], 1)]
        await backend.started.wait()
        futures += [batcher.submit(q, 1) for q in QUERIES[1:]]
        gate.set()
        await asyncio.gather(*futures)
        await batcher.aclose()
        return backend.calls

    assert asyncio.run(scenario()) == [(QUERIES[:1], 1), (QUERIES[1:], 1)]


def test_batches_are_capped_and_split_by_top_k(bm25: Bm25Backend):
    async def scenario():
        backend = Recorded(bm25)
        batcher = MicroBatcher(backend, window_s=0.05, max_queries=3)
        futures = [batcher.submit(q, 1) for q in QUERIES[:7]]
        await asyncio.gather(*futures)
        capped = list(backend.calls)
        backend.calls.clear()
        await asyncio.gather(batcher.submit("jazz", 1), batcher.submit("jazz", 2))
        await batcher.aclose()
        return capped, backend.calls

    capped, mixed = asyncio.run(scenario())
    assert capped == [(QUERIES[0:3], 1), (QUERIES[3:6], 1), (QUERIES[6:7], 1)]
    assert sorted(mixed) == [(["jazz"], 1), (["jazz"], 2)]


def test_a_failing_call_fails_its_waiters_and_the_batcher_keeps_serving(bm25: Bm25Backend):
    async def scenario():
        backend = Recorded(bm25, fail=RuntimeError("index on fire"))
        batcher = MicroBatcher(backend, window_s=0.01, max_queries=10)
        outcomes = await asyncio.gather(
            batcher.submit("a", 1), batcher.submit("b", 1), return_exceptions=True
        )
        backend.fail = None
        later = await batcher.submit("tokyo", 1)
        await batcher.aclose()
        return outcomes, later

    outcomes, later = asyncio.run(scenario())
    assert [str(o) for o in outcomes] == ["index on fire", "index on fire"]
    assert later.hits[0].title == "Tokyo"

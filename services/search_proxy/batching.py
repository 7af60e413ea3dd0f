"""Micro-batching: queries from concurrent requests are merged into one backend call.

Each backend has one MicroBatcher. A query waits in a queue; a dispatcher takes everything queued (up
to `max_queries`) as soon as the backend has a free call slot, after waiting at most `window_s` for more
queries to join when the backend was idle. While a call runs, new queries pile up and leave together as
the next batch, so batches grow with load by themselves. A query already queued or in flight with the
same top_k is not sent again: its waiters share one future ("identical in-flight queries answered once").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.search_proxy.backends import Backend, Hit

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Answer:
    """One query's hits and the wall time of the backend call that produced them."""

    hits: list[Hit]
    backend_ms: float


class MicroBatcher:
    """Queue of (query, top_k) -> shared futures, drained in batches into `backend.search`."""

    def __init__(
        self,
        backend: Backend,
        *,
        window_s: float,
        max_queries: int,
        on_batch: Callable[[int, float, BaseException | None], None] | None = None,
    ) -> None:
        self.backend = backend
        self.window_s = window_s
        self.max_queries = max_queries
        self._on_batch = on_batch  # (queries in the call, seconds, error or None) after every backend call
        self._pending: dict[tuple[str, int], asyncio.Future[Answer]] = {}  # queued, not yet dispatched
        self._in_flight: dict[tuple[str, int], asyncio.Future[Answer]] = {}  # dispatched, not yet answered
        self._slots = asyncio.Semaphore(backend.max_concurrent_calls)
        self._wakeup = asyncio.Event()  # set when the queue is not empty
        self._full = asyncio.Event()  # set when the queue holds max_queries
        self._tasks: set[asyncio.Task[None]] = set()
        self._dispatcher = asyncio.create_task(self._dispatch_forever(), name=f"batcher-{backend.name}")
        self._dispatcher.add_done_callback(self._dispatcher_ended)

    def submit(self, query: str, top_k: int) -> asyncio.Future[Answer]:
        """The future of this query's answer; shared with any identical query queued or in flight."""
        key = (query, top_k)
        future = self._pending.get(key) or self._in_flight.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._pending[key] = future
            self._wakeup.set()
            if len(self._pending) >= self.max_queries:
                self._full.set()
        return future

    async def _dispatch_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            await self._slots.acquire()
            if self.window_s > 0 and len(self._pending) < self.max_queries:
                with contextlib.suppress(asyncio.TimeoutError):  # the window closed before the batch filled
                    await asyncio.wait_for(self._full.wait(), self.window_s)
            keys = list(self._pending)[: self.max_queries]
            batch = {key: self._pending.pop(key) for key in keys}
            self._in_flight.update(batch)
            if len(self._pending) < self.max_queries:
                self._full.clear()
            if not self._pending:
                self._wakeup.clear()
            task = asyncio.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: dict[tuple[str, int], asyncio.Future[Answer]]) -> None:
        """Answer a batch: one backend call per distinct top_k (usually one)."""
        try:
            by_top_k: dict[int, list[str]] = {}
            for query, top_k in batch:
                by_top_k.setdefault(top_k, []).append(query)
            for top_k, queries in by_top_k.items():
                started = time.perf_counter()
                try:
                    results = await self.backend.search(queries, top_k)
                    if len(results) != len(queries):
                        raise RuntimeError(
                            f"the {self.backend.name} backend answered {len(results)} result lists "
                            f"for {len(queries)} queries"
                        )
                except Exception as exc:  # every waiter gets the backend's error; the batcher keeps going
                    if self._on_batch is not None:
                        self._on_batch(len(queries), time.perf_counter() - started, exc)
                    for query in queries:
                        self._settle(batch, (query, top_k), exc)
                    continue
                seconds = time.perf_counter() - started
                if self._on_batch is not None:
                    self._on_batch(len(queries), seconds, None)
                for query, hits in zip(queries, results, strict=True):
                    self._settle(batch, (query, top_k), Answer(hits, seconds * 1000.0))
        finally:
            self._slots.release()

    def _settle(
        self,
        batch: dict[tuple[str, int], asyncio.Future[Answer]],
        key: tuple[str, int],
        outcome: Answer | BaseException,
    ) -> None:
        future = batch[key]
        self._in_flight.pop(key, None)
        if future.done():
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
            future.exception()  # mark it retrieved: waiters that already gave up must not log it as lost
        else:
            future.set_result(outcome)

    def _dispatcher_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:  # a bug: say so loudly, queries would hang
            log.error("micro-batcher of %s stopped: %r", self.backend.name, task.exception())

    async def aclose(self) -> None:
        """Stop dispatching; queued queries fail with a clear error."""
        self._dispatcher.cancel()
        for task in list(self._tasks):
            task.cancel()
        for future in [*self._pending.values(), *self._in_flight.values()]:
            if not future.done():
                future.set_exception(RuntimeError(f"the {self.backend.name} backend is shutting down"))
        self._pending.clear()
        self._in_flight.clear()

"""The proxy's FastAPI app: POST /retrieve (Search-R1), POST /search, GET /healthz, GET /metrics, /docs.

A request's path: limits checked (422 naming the field) -> admission (503 + Retry-After past
`limits.max_inflight_requests`) -> queries normalised -> result cache (SQLite, on its own thread) ->
misses go to the backend's micro-batcher (one retriever call for many concurrent requests, off the event
loop) -> fresh results stored -> answer. A request larger than `batching.max_queries` takes that path one
chunk of `batching.max_queries` queries at a time and its answer is streamed out chunk by chunk, so a
16,384-query request (a whole training batch in one POST, as Search-R1's client sends it) costs the proxy
a few chunks of memory, not the whole answer. Backends load in the background after the server starts, so
/healthz can say "loading"; if loading fails, /healthz says why and `on_fatal` is called.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.types import Receive, Scope, Send

from services.search_proxy.backends import Backend, Hit, UpstreamError, UpstreamTimeout, build_backends
from services.search_proxy.batching import MicroBatcher
from services.search_proxy.cache import ResultCache, normalize_query
from services.search_proxy.corpus import search_r1_contents
from services.search_proxy.metrics import ProxyMetrics
from services.search_proxy.middleware import BodyLimitMiddleware, MetricsMiddleware
from services.search_proxy.schemas import (
    ErrorResponse,
    HealthResponse,
    RetrieveRequest,
    RetrieveResponse,
    SearchRequest,
    SearchResponse,
)
from services.search_proxy.settings import LimitSettings, ProxySettings

log = logging.getLogger("services.search_proxy")
BodyT = TypeVar("BodyT", bound=BaseModel)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 422, 502, 503, 504)
}


@dataclass(frozen=True, slots=True)
class QueryAnswer:
    hits: list[Hit]
    cached: bool
    backend_ms: float


# Where an operator raises a request limit; the 4xx that enforces a limit names it.
RAISE_QUERIES = (
    "raise it where the proxy is started: limits.max_queries_per_request in its config file "
    "(search.proxy.limits.max_queries_per_request in a training config) or --max-queries-per-request N"
)


def check_request(
    queries: list[str], top_k: int, limits: LimitSettings, *, top_k_field: str, allow_empty: bool = False
) -> None:
    """Raise HTTP 422 naming the field when a request breaks a limit."""
    if not queries and not allow_empty:
        raise HTTPException(422, "queries: empty list; send at least one query")
    if len(queries) > limits.max_queries_per_request:
        raise HTTPException(
            422,
            f"queries: {len(queries)} queries, more than limits.max_queries_per_request = "
            f"{limits.max_queries_per_request}; send fewer per request, or {RAISE_QUERIES}",
        )
    for i, query in enumerate(queries):
        if not query.strip():
            raise HTTPException(422, f"queries[{i}]: empty query")
        if len(query) > limits.max_query_chars:
            raise HTTPException(
                422,
                f"queries[{i}]: {len(query)} characters, more than limits.max_query_chars = {limits.max_query_chars}",
            )
    if not 1 <= top_k <= limits.max_top_k:
        raise HTTPException(
            422, f"{top_k_field}: {top_k} is outside the accepted range 1..{limits.max_top_k}"
        )


def _json(value: Any) -> bytes:
    """JSON as Starlette's JSONResponse writes it (compact, UTF-8, no NaN)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _items(item: Callable[[str, QueryAnswer], Any], queries: list[str], answers: list[QueryAnswer]) -> bytes:
    """`item(query, answer)` of each pair as comma-separated JSON values (a JSON array without brackets)."""
    return _json([item(q, a) for q, a in zip(queries, answers, strict=True)])[1:-1]


class _StreamedJSON(StreamingResponse):
    """A streamed JSON answer that runs `on_close` however it ends: sent, failed, or the client left."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]]) -> None:
        super().__init__(content, media_type="application/json")
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


class ProxyState:
    """Everything one app serves with: backends, their batchers, the cache, metrics, load status."""

    def __init__(self, settings: ProxySettings, on_fatal: Callable[[BaseException], None] | None) -> None:
        self.settings = settings
        self.metrics = ProxyMetrics()
        self.on_fatal = on_fatal
        self.status = "loading"
        self.error: str | None = None
        self.backends: dict[str, Backend] = {}
        self.batchers: dict[str, MicroBatcher] = {}
        self.cache: ResultCache | None = None
        self.in_flight = 0
        # One thread owns SQLite, so cache reads and writes never wait behind retrieval (or block the loop).
        self.cache_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache")
        self.token: str | None = None
        if settings.auth_required():
            self.token = os.environ.get(settings.auth.token_env, "").strip()
            if not self.token:
                raise ValueError(
                    f"auth is on (auth.enabled = {settings.auth.enabled}, host = {settings.host}) but the token "
                    f"variable {settings.auth.token_env} is unset or empty; set it, or set auth.enabled: false"
                )

    async def load(self) -> None:
        """Build the backends and open the cache off the event loop; record failure instead of raising."""
        loop = asyncio.get_running_loop()
        try:
            backends = await loop.run_in_executor(None, build_backends, self.settings)
            if self.settings.cache.mode != "off":
                self.cache = await loop.run_in_executor(
                    self.cache_thread, ResultCache, self.settings.cache.dir
                )
        except Exception as exc:  # any load failure: report it on /healthz and stop the server
            self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"
            log.error("search proxy: loading the %s backend failed: %s", self.settings.backend, self.error)
            if self.on_fatal is not None:
                self.on_fatal(exc)
            return
        batching = self.settings.batching
        for name, backend in backends.items():
            self.batchers[name] = MicroBatcher(
                backend,
                window_s=batching.window_ms / 1000.0,
                max_queries=batching.max_queries,
                on_batch=self._batch_recorder(name),
            )
        self.backends = backends
        # The corpus and index are hundreds of thousands of long-lived objects; every full collection of
        # the cyclic GC would walk them all (tens of ms, measured as the p99 latency under load). Freeze
        # what exists now so collections only look at what requests allocate.
        gc.collect()
        gc.freeze()
        self.status = "ready"
        log.info("search proxy: %s ready (serving %s)", self.settings.backend, ", ".join(backends))

    def _batch_recorder(self, name: str) -> Callable[[int, float, BaseException | None], None]:
        def record(queries: int, seconds: float, error: BaseException | None) -> None:
            self.metrics.child(self.metrics.batch_queries, name).observe(queries)
            self.metrics.child(self.metrics.backend_seconds, name).observe(seconds)
            if error is not None:
                kind = "timeout" if isinstance(error, UpstreamTimeout) else "error"
                self.metrics.child(self.metrics.upstream_errors, name, kind).inc()

        return record

    async def close(self) -> None:
        for batcher in self.batchers.values():
            await batcher.aclose()
        for backend in self.backends.values():
            await backend.aclose()
        if self.cache is not None:
            self.cache_thread.submit(self.cache.close)
        self.cache_thread.shutdown(wait=True)  # pending cache writes finish before the process exits

    async def check_token(self, request: Request) -> None:
        """Require `Authorization: Bearer <token>` when auth is on (HTTP 401 otherwise).

        Async on purpose: FastAPI runs sync dependencies on a worker thread, a thread hop per request.
        """
        if self.token is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token.encode()):
            raise HTTPException(
                401,
                "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def _backend(self, name: str | None) -> tuple[Backend, MicroBatcher]:
        retry = {"Retry-After": str(self.settings.limits.retry_after_s)}
        if self.status == "loading":
            raise HTTPException(503, f"the {self.settings.backend} backend is still loading", headers=retry)
        if self.status == "failed":
            raise HTTPException(503, f"the {self.settings.backend} backend failed to load: {self.error}")
        name = name or self.settings.backend
        if name not in self.backends:
            raise HTTPException(
                422, f"backend: '{name}' is not served here; served: {', '.join(self.backends)}"
            )
        return self.backends[name], self.batchers[name]

    def _admit(self, backend_name: str | None) -> tuple[Backend, MicroBatcher]:
        """The backend and its batcher, counting one more request in flight (503 past the limit)."""
        backend, batcher = self._backend(backend_name)
        limits = self.settings.limits
        if self.in_flight >= limits.max_inflight_requests:
            self.metrics.rejected.inc()
            raise HTTPException(
                503,
                f"overloaded: {self.in_flight} requests in flight (limits.max_inflight_requests); retry later",
                headers={"Retry-After": str(limits.retry_after_s)},
            )
        self.in_flight += 1
        self.metrics.in_flight.inc()
        return backend, batcher

    def _release(self) -> None:
        self.in_flight -= 1
        self.metrics.in_flight.dec()

    async def respond(
        self,
        queries: list[str],
        top_k: int,
        backend_name: str | None,
        head: bytes,
        item: Callable[[str, QueryAnswer], Any],
        tail: bytes,
    ) -> Response:
        """The JSON answer `head`, then `item(query, answer)` for each query in request order, then `tail`.

        At most `batching.max_queries` queries: answered whole, with a Content-Length. More: fed to the
        micro-batcher one chunk of `batching.max_queries` at a time (the next chunk queued while the
        backend works on the current one, so it never idles and other clients' queries get in between)
        and streamed out as each chunk is answered, so the proxy holds at most two chunks of hits and one
        chunk of JSON whatever the request's size. The first chunk is answered before the status line is
        sent, so its errors are ordinary 4xx/5xx answers; a later chunk failing (backend error, or no
        answer within `limits.request_timeout_s`) ends the response early: the connection closes before
        the closing bracket, so no client can take the answer for a complete one.
        """
        backend, batcher = self._admit(backend_name)
        chunks = self._answer_chunks(backend, batcher, queries, top_k)
        size = self.settings.batching.max_queries
        try:
            first = await anext(chunks)
            body = _items(item, queries[: len(first)], first)
        except BaseException:
            await chunks.aclose()
            self._release()
            raise
        if len(queries) <= size:
            self._release()
            return Response(head + body + tail, media_type="application/json")

        async def stream() -> AsyncIterator[bytes]:
            yield head + body
            start = size
            try:
                async for answers in chunks:
                    yield b"," + _items(item, queries[start : start + len(answers)], answers)
                    start += len(answers)
            except HTTPException as exc:
                log.error(
                    "search proxy: a %d-query request failed after %d queries were sent; closing the "
                    "connection: %s",
                    len(queries),
                    start,
                    exc.detail,
                )
                raise
            yield tail

        async def close() -> None:
            await chunks.aclose()
            self._release()

        return _StreamedJSON(stream(), close)

    async def _answer_chunks(
        self, backend: Backend, batcher: MicroBatcher, queries: list[str], top_k: int
    ) -> AsyncIterator[list[QueryAnswer]]:
        """The answers to `queries`, one list per chunk of `batching.max_queries`, two chunks in flight."""
        size = self.settings.batching.max_queries
        if self.settings.cache.mode == "replay" and len(queries) > size:
            await self._check_replay(backend, queries, top_k)  # a 404 before any part of the answer is sent
        in_flight: deque[asyncio.Task[list[QueryAnswer]]] = deque()
        try:
            for start in range(0, len(queries), size):
                chunk = queries[start : start + size]
                in_flight.append(asyncio.create_task(self._answer_chunk(backend, batcher, chunk, top_k)))
                if len(in_flight) == 2:
                    yield await self._chunk_result(backend, in_flight.popleft())
            while in_flight:
                yield await self._chunk_result(backend, in_flight.popleft())
        finally:
            for task in in_flight:  # the request failed or the client left: queued chunks are not needed
                task.cancel()

    async def _chunk_result(
        self, backend: Backend, task: asyncio.Task[list[QueryAnswer]]
    ) -> list[QueryAnswer]:
        """A chunk's answers, with its failure as the HTTP error that reports it."""
        timeout = self.settings.limits.request_timeout_s
        try:
            return await asyncio.wait_for(task, timeout)
        except HTTPException:
            raise
        except asyncio.TimeoutError:
            raise HTTPException(
                504,
                f"backend '{backend.name}' did not answer within limits.request_timeout_s = {timeout:g} s",
            ) from None
        except UpstreamTimeout as exc:
            raise HTTPException(504, f"backend '{backend.name}': {exc}") from None
        except UpstreamError as exc:
            raise HTTPException(502, f"backend '{backend.name}': {exc}") from None
        except Exception as exc:  # a backend bug must answer 500 with its cause, not kill the server
            log.exception("search proxy: backend %s failed", backend.name)
            raise HTTPException(
                500, f"backend '{backend.name}' failed: {type(exc).__name__}: {exc}"
            ) from None

    async def _check_replay(self, backend: Backend, queries: list[str], top_k: int) -> None:
        """404 unless every query of the request is in the cache (replay mode serves nothing else)."""
        assert self.cache is not None  # replay mode always opens the cache
        unique = list(dict.fromkeys(normalize_query(q) for q in queries))
        missing = await asyncio.get_running_loop().run_in_executor(
            self.cache_thread,
            lambda: self.cache.missing(backend.cache_key, unique, top_k),  # type: ignore[union-attr]
        )
        if missing:
            raise _replay_miss(backend, len(missing), len(unique), missing[0], top_k)

    async def _answer_chunk(
        self, backend: Backend, batcher: MicroBatcher, queries: list[str], top_k: int
    ) -> list[QueryAnswer]:
        """Hits for each query (in order), from the cache or the backend's micro-batcher."""
        loop = asyncio.get_running_loop()
        mode = self.settings.cache.mode
        normalized = [normalize_query(q) for q in queries]
        unique = list(dict.fromkeys(normalized))
        self.metrics.child(self.metrics.queries, backend.name).inc(len(queries))
        cached: dict[str, list[Hit]] = {}
        if self.cache is not None:
            max_age = 0.0 if mode == "replay" else backend.cache_ttl_s  # replay serves whatever it has
            cached = await loop.run_in_executor(
                self.cache_thread,
                lambda: self.cache.get_many(backend.cache_key, unique, top_k, max_age_s=max_age),  # type: ignore[union-attr]
            )
        hits = sum(1 for q in normalized if q in cached)
        self.metrics.child(self.metrics.cache_hits, backend.name).inc(hits)
        self.metrics.child(self.metrics.cache_misses, backend.name).inc(len(normalized) - hits)
        missing = [q for q in unique if q not in cached]
        if missing and mode == "replay":
            raise _replay_miss(backend, len(missing), len(unique), missing[0], top_k)
        fresh: dict[str, list[Hit]] = {}
        backend_ms: dict[str, float] = {}
        if missing:
            futures = [batcher.submit(q, top_k) for q in missing]
            # shielded: a future may be shared with other requests, which must not lose it if this one ends
            answers = await asyncio.gather(*(asyncio.shield(f) for f in futures))
            for query, answer in zip(missing, answers, strict=True):
                fresh[query], backend_ms[query] = answer.hits, answer.backend_ms
            if self.cache is not None and mode == "read_write":
                write = self.cache_thread.submit(self.cache.put_many, backend.cache_key, top_k, fresh)
                write.add_done_callback(_log_cache_write_error)
        return [
            QueryAnswer(cached[q], True, 0.0) if q in cached else QueryAnswer(fresh[q], False, backend_ms[q])
            for q in normalized
        ]


def _replay_miss(backend: Backend, missing: int, unique: int, example: str, top_k: int) -> HTTPException:
    return HTTPException(
        404,
        f"replay cache miss: {missing} of {unique} queries have no cached result for backend "
        f"'{backend.name}' with top_k {top_k}, e.g. {example!r} (cache.mode is replay)",
    )


def _log_cache_write_error(write: Future[None]) -> None:
    if write.exception() is not None:  # the answer was already sent; a failed write only loses this entry
        log.error("search proxy: writing to the result cache failed: %s", write.exception())


def describe_errors(errors: list[Any]) -> HTTPException:
    """400 for unparsable JSON, else 422 with one readable line per problem, naming the field."""
    for e in errors:
        if e.get("type") == "json_invalid":
            return HTTPException(400, f"malformed JSON body: {e.get('ctx', {}).get('error', e.get('msg'))}")
    lines = []
    for e in errors:
        field = ".".join(str(part) for part in e.get("loc", ()) if part != "body") or "body"
        lines.append(f"{field}: {e.get('msg')}")
    return HTTPException(422, "; ".join(lines))


def parse_body(model: type[BodyT], body: bytes) -> BodyT:
    """Validate a JSON request body (pydantic-core parses it straight from bytes: no dict step)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise describe_errors(exc.errors()) from None


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    error = describe_errors(list(exc.errors()))
    return JSONResponse({"detail": error.detail}, status_code=error.status_code)


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI entry for a body the handler parses itself (so /docs still shows it)."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def create_app(
    settings: ProxySettings, *, on_fatal: Callable[[BaseException], None] | None = None
) -> FastAPI:
    """The proxy app for these settings. `on_fatal(exc)` is called if the backend fails to load."""
    state = ProxyState(settings, on_fatal)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(state.load())
        yield
        loading.cancel()
        await state.close()

    app = FastAPI(
        title="igpo-rlhf search proxy",
        description="Search-R1-compatible /retrieve and a richer /search over bm25, dense, hybrid, remote or "
        "web backends, with micro-batching, a SQLite result cache and Prometheus metrics.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.proxy = state
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.limits.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)  # added last = outermost: sees 413s too
    # The hot endpoints take the raw request and validate its body themselves: FastAPI's dependency and
    # body machinery cost about a third of the per-request CPU here (bench/search_proxy.py), and the
    # token check is a dependency only when auth is on.
    authorized = [Depends(state.check_token)] if state.token is not None else []

    @app.post(
        "/retrieve",
        response_model=RetrieveResponse,
        responses=_ERRORS,
        dependencies=authorized,
        openapi_extra=_body_doc(RetrieveRequest),
    )
    async def retrieve(request: Request) -> Response:
        """Search-R1's retrieval-server contract: `{"queries", "topk", "return_scores"}` -> `{"result"}`."""
        body = parse_body(RetrieveRequest, await request.body())
        top_k = settings.limits.default_top_k if body.topk is None else body.topk
        # Search-R1's client posts an empty list when no rollout searched this turn; its server answers [].
        check_request(body.queries, top_k, settings.limits, top_k_field="topk", allow_empty=True)
        if not body.queries:
            return JSONResponse({"result": []})
        item = _scored_documents if body.return_scores else _documents
        return await state.respond(body.queries, top_k, None, b'{"result":[', item, b"]}")

    @app.post(
        "/search",
        response_model=SearchResponse,
        responses=_ERRORS,
        dependencies=authorized,
        openapi_extra=_body_doc(SearchRequest),
    )
    async def search(request: Request) -> Response:
        """Hits per query with title, text, score (and url for web backends), cache flag and backend time."""
        body = parse_body(SearchRequest, await request.body())
        top_k = settings.limits.default_top_k if body.top_k is None else body.top_k
        check_request(body.queries, top_k, settings.limits, top_k_field="top_k")
        head = _json({"backend": body.backend or settings.backend, "top_k": top_k, "results": []})[:-2]
        return await state.respond(body.queries, top_k, body.backend, head, _search_result, b"]}")

    @app.get("/healthz", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    async def healthz() -> JSONResponse:
        """200 once the backend is ready; 503 while loading or after a failed load (with the error)."""
        first = next(iter(state.backends.values()), None)
        passages = getattr(first, "passages", None)
        body = {
            "status": state.status,
            "backend": settings.backend,
            "backends": list(state.backends),
            "passages": len(passages) if passages is not None else None,
            "cache_mode": settings.cache.mode,
            "error": state.error,
        }
        return JSONResponse(body, status_code=200 if state.status == "ready" else 503)

    @app.get("/metrics", dependencies=authorized)
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _scored_documents(_: str, answer: QueryAnswer) -> list[dict[str, Any]]:
    """/retrieve with return_scores: [{"document": {"id", "contents"}, "score"}] per query."""
    return [
        {"document": {"id": h.id, "contents": search_r1_contents(h.title, h.text)}, "score": h.score}
        for h in answer.hits
    ]


def _documents(_: str, answer: QueryAnswer) -> list[dict[str, Any]]:
    """/retrieve without scores: the documents [{"id", "contents"}] per query."""
    return [{"id": h.id, "contents": search_r1_contents(h.title, h.text)} for h in answer.hits]


def _search_result(query: str, answer: QueryAnswer) -> dict[str, Any]:
    """/search: one entry of `results`."""
    return {
        "query": query,
        "hits": [h.to_dict() for h in answer.hits],
        "cached": answer.cached,
        "backend_ms": round(answer.backend_ms, 3),
    }

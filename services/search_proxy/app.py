"""The proxy's FastAPI app: POST /retrieve (Search-R1), POST /search, GET /healthz, GET /metrics, /docs.

A request's path: limits checked (422 naming the field) -> admission (503 + Retry-After past
`limits.max_inflight_requests`) -> queries normalised -> result cache (SQLite, on its own thread) ->
misses go to the backend's micro-batcher (one retriever call for many concurrent requests, off the event
loop) -> fresh results stored -> answer. Backends load in the background after the server starts, so
/healthz can say "loading"; if loading fails, /healthz says why and `on_fatal` is called.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from services.search_proxy.backends import Backend, Hit, UpstreamError, UpstreamTimeout, build_backends
from services.search_proxy.batching import MicroBatcher
from services.search_proxy.cache import ResultCache, normalize_query
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


def check_request(queries: list[str], top_k: int, limits: LimitSettings, *, top_k_field: str) -> None:
    """Raise HTTP 422 naming the field when a request breaks a limit."""
    if not queries:
        raise HTTPException(422, "queries: empty list; send at least one query")
    if len(queries) > limits.max_queries_per_request:
        raise HTTPException(
            422,
            f"queries: {len(queries)} queries, more than limits.max_queries_per_request = "
            f"{limits.max_queries_per_request}",
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

    async def answer(self, queries: list[str], top_k: int, backend_name: str | None) -> list[QueryAnswer]:
        """Hits for each query (request order), from the cache or the backend's micro-batcher."""
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
        try:
            return await self._answer(backend, batcher, queries, top_k)
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()

    async def _answer(
        self, backend: Backend, batcher: MicroBatcher, queries: list[str], top_k: int
    ) -> list[QueryAnswer]:
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
            raise HTTPException(
                404,
                f"replay cache miss: {len(missing)} of {len(unique)} queries have no cached result for backend "
                f"'{backend.name}' with top_k {top_k}, e.g. {missing[0]!r} (cache.mode is replay)",
            )
        fresh: dict[str, list[Hit]] = {}
        backend_ms: dict[str, float] = {}
        if missing:
            futures = [batcher.submit(q, top_k) for q in missing]
            try:
                answers = await asyncio.wait_for(
                    asyncio.gather(*(asyncio.shield(f) for f in futures)),
                    self.settings.limits.request_timeout_s,
                )
            except asyncio.TimeoutError:
                raise HTTPException(
                    504,
                    f"backend '{backend.name}' did not answer within limits.request_timeout_s = "
                    f"{self.settings.limits.request_timeout_s:g} s",
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
            for query, answer in zip(missing, answers, strict=True):
                fresh[query], backend_ms[query] = answer.hits, answer.backend_ms
            if self.cache is not None and mode == "read_write":
                write = self.cache_thread.submit(self.cache.put_many, backend.cache_key, top_k, fresh)
                write.add_done_callback(_log_cache_write_error)
        return [
            QueryAnswer(cached[q], True, 0.0) if q in cached else QueryAnswer(fresh[q], False, backend_ms[q])
            for q in normalized
        ]


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
    async def retrieve(request: Request) -> JSONResponse:
        """Search-R1's retrieval-server contract: `{"queries", "topk", "return_scores"}` -> `{"result"}`."""
        body = parse_body(RetrieveRequest, await request.body())
        top_k = settings.limits.default_top_k if body.topk is None else body.topk
        check_request(body.queries, top_k, settings.limits, top_k_field="topk")
        answers = await state.answer(body.queries, top_k, None)
        if body.return_scores:
            result = [
                [{"document": {"id": h.id, "contents": _contents(h)}, "score": h.score} for h in a.hits]
                for a in answers
            ]
        else:
            result = [[{"id": h.id, "contents": _contents(h)} for h in a.hits] for a in answers]
        return JSONResponse({"result": result})

    @app.post(
        "/search",
        response_model=SearchResponse,
        responses=_ERRORS,
        dependencies=authorized,
        openapi_extra=_body_doc(SearchRequest),
    )
    async def search(request: Request) -> JSONResponse:
        """Hits per query with title, text, score (and url for web backends), cache flag and backend time."""
        body = parse_body(SearchRequest, await request.body())
        top_k = settings.limits.default_top_k if body.top_k is None else body.top_k
        check_request(body.queries, top_k, settings.limits, top_k_field="top_k")
        answers = await state.answer(body.queries, top_k, body.backend)
        name = body.backend or settings.backend
        results = [
            {
                "query": query,
                "hits": [h.to_dict() for h in a.hits],
                "cached": a.cached,
                "backend_ms": round(a.backend_ms, 3),
            }
            for query, a in zip(body.queries, answers, strict=True)
        ]
        return JSONResponse({"backend": name, "top_k": top_k, "results": results})

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


def _contents(hit: Hit) -> str:
    """Search-R1's `contents`: '"Title"\\ntext'."""
    return f'"{hit.title}"\n{hit.text}' if hit.title else hit.text

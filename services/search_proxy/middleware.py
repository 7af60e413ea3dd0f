"""ASGI middlewares of the proxy: a request-body size limit, and per-endpoint request metrics.

Plain ASGI rather than Starlette's BaseHTTPMiddleware: cheaper per request, and the body limit must
read the body before the app does.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.search_proxy.metrics import ProxyMetrics


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class BodyLimitMiddleware:
    """Answer 413 to a request body over `max_bytes`, whether declared (Content-Length) or streamed."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        too_large = {
            "detail": f"request body: larger than limits.max_body_bytes = {self.max_bytes} bytes; send fewer "
            "queries per request, or raise it where the proxy is started: limits.max_body_bytes in its config "
            "file (search.proxy.limits.max_body_bytes in a training config) or --max-body-bytes N"
        }
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_json(send, 413, too_large)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _send_json(send, 413, too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect like the server would

        await self.app(scope, replay, send)


class MetricsMiddleware:
    """Count requests by endpoint and status, and time them (unknown paths are counted as 'other')."""

    ENDPOINTS = frozenset({"/search", "/retrieve", "/healthz", "/metrics"})

    def __init__(self, app: ASGIApp, *, metrics: ProxyMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in self.ENDPOINTS else "other"
        status = 500  # if the app dies before answering
        started = time.perf_counter()

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.child(self.metrics.requests, endpoint, str(status)).inc()
            self.metrics.child(self.metrics.request_seconds, endpoint).observe(time.perf_counter() - started)

"""Real search backends that misbehave, for the tests of search failures: a socket that accepts and never
answers, and `ScriptedBackend`, a real HTTP server on 127.0.0.1 that forwards every request to a real search
proxy while its mode is "pass", answers HTTP 500 in mode "fail" and holds the request unanswered in mode
"hang". The mode can be switched at any time, or by `on_request(backend, method, path)` before a request is
handled (it returns the mode for that request, or None to keep the current one)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

import httpx

Mode = Literal["pass", "fail", "hang"]


@contextmanager
def hanging_socket() -> Iterator[str]:
    """The URL of a listening socket that never answers: the kernel completes every connection (backlog),
    nothing ever reads the request or writes a byte."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


class ScriptedBackend:
    """A real HTTP server in front of `upstream` (a real search proxy's URL, or None: nothing to forward to)."""

    def __init__(
        self,
        upstream: str | None,
        mode: Mode = "pass",
        on_request: Callable[[ScriptedBackend, str, str], Mode | None] | None = None,
    ) -> None:
        self.upstream = upstream
        self.mode: Mode = mode
        self.on_request = on_request
        self.requests: list[tuple[str, str, Mode]] = []  # (method, path, mode it was handled in)
        self.released = threading.Event()  # set at stop: hung requests end
        self.lock = threading.RLock()  # on_request may call count()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                backend._handle(self, "GET")

            def do_POST(self) -> None:
                backend._handle(self, "POST")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedBackend:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def count(self, path: str, mode: Mode | None = None) -> int:
        """Requests to `path` handled so far (in `mode`, when given)."""
        with self.lock:
            return sum(p == path and (mode is None or m == mode) for _, p, m in self.requests)

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        with self.lock:
            if self.on_request is not None:
                self.mode = self.on_request(self, method, handler.path) or self.mode
            mode = self.mode
            self.requests.append((method, handler.path, mode))
        if mode == "hang":
            self.released.wait()
            return
        if mode == "fail" or self.upstream is None:
            status, content_type, content = 500, "application/json", b'{"detail": "backend failure (test)"}'
        else:
            answer = httpx.request(
                method,
                f"{self.upstream}{handler.path}",
                content=body,
                headers={"content-type": handler.headers.get("Content-Type", "application/json")},
                timeout=120,
            )
            status, content_type = answer.status_code, answer.headers.get("content-type", "application/json")
            content = answer.content
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(content)))
        handler.end_headers()
        handler.wfile.write(content)

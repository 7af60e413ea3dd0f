"""`igpo view PATH [--host 127.0.0.1] [--port 8000] [--token TOKEN]`: the web app over a run or eval directory.

Pages (one HTML shell, static/index.html; the JS in static/ draws them from the JSON API):

    /                                 run overview: training curves (or an eval directory's scores)
    /trajectories?part=STEP&...       the trajectory list: filter, sort, page
    /trajectory/STEP/INDEX            one trajectory: turns, beliefs, r_t, r̃_t, Â_t, tokens
    /group/STEP/GROUP                 the n rollouts of one prompt: GRPO's and IGPO's advantages

    /api/info, /api/metrics, /api/trajectories, /api/trajectory/STEP/INDEX[/tokens], /api/group/STEP/GROUP

STEP is a run's step number, or `eval` in an eval directory; INDEX a 0-based line of that rollouts file.
Read-only (GET only; the directory is only read). It binds 127.0.0.1 by default and refuses another
interface without a token (--token, or the variable named by --token-env); with a token every request
needs `Authorization: Bearer <token>` or `?token=<token>`, as the search proxy's auth.
"""

from __future__ import annotations

import argparse
import dataclasses
import hmac
import json
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from igpo_rlhf.viewer.directory import EVAL_KEY, ViewedDirectory
from igpo_rlhf.viewer.listing import SORT_KEYS, ListPage, ListQuery, list_rows
from igpo_rlhf.viewer.rollouts import OUTCOMES, Problem
from igpo_rlhf.viewer.trajectory import group_detail, token_view, trajectory_detail
from services.search_proxy.settings import is_loopback

TOKEN_ENV = "IGPO_VIEW_TOKEN"
ALL_PARTS = "all"
STATIC = resources.files("igpo_rlhf.viewer") / "static"
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------- JSON
def _finite(value: Any) -> Any:
    """NaN/inf -> None everywhere (JSON has no NaN; the page shows "–")."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_response(payload: Any, status: int = 200) -> Response:
    """A dataclass (or plain data) as JSON, without FastAPI's slow generic encoder."""
    data = dataclasses.asdict(payload) if dataclasses.is_dataclass(payload) else payload
    try:
        body = json.dumps(data, allow_nan=False, ensure_ascii=False)
    except ValueError:
        body = json.dumps(_finite(data), allow_nan=False, ensure_ascii=False)
    return Response(body, status_code=status, media_type="application/json")


def _answer(build: Callable[[], T]) -> Response:
    """200 with the result; 404 for a missing step/row/group (KeyError); 422 for a bad request or a row the
    page cannot be drawn from (a value of the wrong type or shape), with the message, never a crash."""
    try:
        return json_response(build())
    except KeyError as err:
        return json_response({"detail": str(err.args[0] if err.args else err)}, 404)
    except ValueError as err:
        return json_response({"detail": str(err)}, 422)
    except (TypeError, IndexError, AttributeError) as err:
        return json_response({"detail": f"the row has a value of the wrong type or shape: {err}"}, 422)


# ---------------------------------------------------------------------------------------------- auth
class TokenAuth:
    """Every request needs `Authorization: Bearer <token>` or `?token=<token>` (HTTP 401 otherwise)."""

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        self.app = app
        self.token = token.encode()

    def _ok(self, scope: Scope) -> bool:
        scheme, _, value = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token):
            return True
        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[-1]
        return hmac.compare_digest(given.encode(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._ok(scope):
            body = json.dumps(
                {
                    "detail": "missing or wrong token: send 'Authorization: Bearer <token>' or add ?token=<token>"
                }
            ).encode()
            headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]
            await send({"type": "http.response.start", "status": 401, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


# ----------------------------------------------------------------------------------------------- app
@dataclasses.dataclass
class PartInfo:
    key: str
    step: int | None
    label: str


@dataclasses.dataclass
class ViewInfo:
    kind: str  # run | eval
    name: str
    path: str
    parts: list[PartInfo]
    default_part: str | None
    settings: Any
    model_path: str | None
    metric_names: list[str]
    scores: Any  # EvalScores of an eval directory
    problems: list[Problem]


@dataclasses.dataclass
class TrajectoryList:
    part: str
    page: ListPage
    problems: list[Problem]
    index_seconds: float


def create_app(directory: str | Path | ViewedDirectory, *, token: str | None = None) -> ASGIApp:
    """The viewer over `directory`; with a token, wrapped in TokenAuth."""
    view = directory if isinstance(directory, ViewedDirectory) else ViewedDirectory(directory)
    view.preload_tokenizer()
    shell = (STATIC / "index.html").read_text(encoding="utf-8")
    shell = shell.replace("__ASSET_QUERY__", f"?token={quote(token)}" if token else "")
    app = FastAPI(title=f"igpo view {view.name}", docs_url=None, redoc_url=None, openapi_url=None)

    def page() -> HTMLResponse:
        return HTMLResponse(shell, headers={"cache-control": "no-store"})

    for route in ("/", "/trajectories", "/trajectory/{part}/{index}", "/group/{part}/{group}"):
        app.add_api_route(route, page, methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    def default_part(keys: list[str]) -> str | None:
        return keys[-1] if keys else None

    @app.get("/api/info")
    def info() -> Response:
        files = view.files()
        metrics = view.metrics() if view.kind == "run" else None
        return json_response(
            ViewInfo(
                kind=view.kind,
                name=view.name,
                path=str(view.path),
                parts=[PartInfo(f.key, f.step, f.label) for f in files.values()],
                default_part=default_part(list(files)),
                settings=view.settings,
                model_path=view.model_path(),
                metric_names=metrics.names if metrics else [],
                scores=view.scores,
                problems=view.problems + (metrics.problems if metrics else []),
            )
        )

    @app.get("/api/metrics")
    def metrics() -> Response:
        return json_response(view.metrics())

    @app.get("/api/trajectories")
    def trajectories(
        part: str | None = Query(None, description="a step number, `eval`, or `all`; default: the last step"),
        q: str = Query("", description="a substring of the question (case-insensitive)"),
        outcome: str | None = Query(None, description=f"one of {', '.join(OUTCOMES)}"),
        finish: str | None = Query(None, description="a finish reason"),
        turns: int | None = Query(None, ge=1),
        searches: int | None = Query(None, ge=0),
        source: str | None = Query(None),
        group: str | None = Query(None, description="a group key (a run's group_id)"),
        sort: str = Query("order", description=f"one of {', '.join(SORT_KEYS)}"),
        order: str = Query("desc", pattern="^(asc|desc)$"),
        page: int = Query(1, ge=1),
        per_page: int = Query(50, ge=1),
    ) -> Response:
        def build() -> TrajectoryList:
            query = ListQuery(
                text=q.strip(),
                outcome=outcome or None,
                finish=finish or None,
                turns=turns,
                searches=searches,
                source=source or None,
                group=group,
                sort=sort,
                descending=order == "desc",
                page=page,
                per_page=per_page,
            )
            files = view.files()
            key = part or default_part(list(files)) or EVAL_KEY
            chosen = list(files.values()) if key == ALL_PARTS else [view.file(key)]
            started = time.perf_counter()
            indexes = [f.index() for f in chosen]
            seconds = time.perf_counter() - started
            rows = [r for index in indexes for r in index.rows]
            problems = [p for index in indexes for p in index.problems]
            return TrajectoryList(key, list_rows(rows, query), problems, seconds)

        return _answer(build)

    @app.get("/api/trajectory/{part}/{index}")
    def trajectory(part: str, index: int) -> Response:
        return _answer(lambda: trajectory_detail(view, part, index))

    @app.get("/api/trajectory/{part}/{index}/tokens")
    def tokens(part: str, index: int) -> Response:
        return _answer(lambda: token_view(view, part, index))

    @app.get("/api/group/{part}/{group}")
    def group_page(part: str, group: str) -> Response:
        return _answer(lambda: group_detail(view, part, group))

    return TokenAuth(app, token=token) if token else app


# ----------------------------------------------------------------------------------------------- CLI
def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); port 0 picks a free one. OSError when it cannot bind."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    return sock


def main(argv: list[str] | None = None) -> int:
    """Browse a training run or an eval directory in a local web app (read-only)."""
    ap = argparse.ArgumentParser(prog="igpo view", description=main.__doc__)
    ap.add_argument(
        "path", help="a run directory (metrics.jsonl, rollouts/) or an eval directory (scores.json)"
    )
    ap.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    ap.add_argument("--token", default=None, help=f"require this bearer token (default: ${TOKEN_ENV})")
    ap.add_argument("--token-env", default=TOKEN_ENV, help="environment variable holding the token")
    args = ap.parse_args(argv)
    token = (args.token or os.environ.get(args.token_env, "")).strip() or None
    if not is_loopback(args.host) and token is None:
        print(
            f"igpo view: --host {args.host} is not a loopback address, so requests must carry a token: pass "
            f"--token TOKEN or set {args.token_env}; or keep the default --host 127.0.0.1",
            file=sys.stderr,
        )
        return 2
    if not 0 <= args.port <= 65535:
        print(f"igpo view: --port {args.port}; accepted: 0 (any free port) to 65535", file=sys.stderr)
        return 2
    try:
        app = create_app(args.path, token=token)
    except ValueError as err:
        print(f"igpo view: {err}", file=sys.stderr)
        return 2
    try:
        sock = bind(args.host, args.port)
    except OSError as err:
        print(
            f"igpo view: cannot listen on {args.host}:{args.port} ({err.strerror or err}); pass another --port "
            "(0: any free port)",
            file=sys.stderr,
        )
        return 2
    import uvicorn

    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    view_name = Path(args.path).resolve().name
    auth = (
        " (token required: open .../?token=<token>, or send 'Authorization: Bearer <token>')" if token else ""
    )
    print(f"igpo view: {view_name} at http://{shown}:{port}/{auth}  (Ctrl-C stops)", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())

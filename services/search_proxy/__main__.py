"""`python -m services.search_proxy [--config FILE] [--backend ...] [--corpus ...] [--port ...] [...]`.

Flags override the config file; without a file they start from the defaults of ProxySettings. The
first line printed is `search proxy: serving <backend> on http://HOST:PORT` (the real port when --port 0).
Exit status: 0 after a normal shutdown (SIGINT/SIGTERM), 1 if the backend failed to load, 2 for a bad
config. `--parent-pid PID` (what `launch.start_proxy` passes): shut down, as on SIGTERM, once process PID is
no longer this process's parent — the process that started the proxy died, even by SIGKILL, so the proxy
does not outlive it holding its port.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from services.search_proxy.settings import ProxySettings, read_settings_file, settings_from_dict


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.search_proxy", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--config", help="YAML file of ProxySettings (see configs/search/)")
    parser.add_argument("--backend", choices=["bm25", "dense", "hybrid", "remote", "serper", "bing"])
    parser.add_argument("--corpus", help="passage file (.jsonl / .jsonl.gz) for bm25, dense and hybrid")
    parser.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on; 0 = any free port (default 8000)")
    parser.add_argument("--cache-dir", help="directory of the result cache and saved indexes")
    parser.add_argument("--cache-mode", choices=["off", "read_write", "replay"])
    parser.add_argument("--remote-url", help="the /retrieve URL for --backend remote")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--max-queries-per-request", type=int, help="queries allowed in one request (default 65536)"
    )
    parser.add_argument("--max-body-bytes", type=int, help="largest request body (default 32 MiB)")
    parser.add_argument(
        "--parent-pid",
        type=int,
        help="shut down when process PID is no longer this process's parent (the launcher died)",
    )
    return parser.parse_args(argv)


PARENT_POLL_S = 0.5  # how often the proxy looks for its launcher (--parent-pid)


def watch_parent(parent_pid: int) -> None:
    """SIGTERM to this process (uvicorn's graceful shutdown) once `parent_pid` is no longer its parent: a
    dead parent's orphans are re-parented (to init or a subreaper). Polling getppid() is used rather than
    Linux's PR_SET_PDEATHSIG, which fires when the *thread* that started the child exits, so a proxy
    launched from a worker thread would be killed while its launcher still runs."""

    def poll() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        print(f"search proxy: parent process {parent_pid} is gone; shutting down", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=poll, name="parent-watch", daemon=True).start()


def settings_from_args(args: argparse.Namespace) -> ProxySettings:
    """The config file (if any) with the flags laid over it, validated once."""
    data: dict[str, Any] = read_settings_file(args.config) if args.config else {}
    for flag, key in [
        ("backend", ("backend",)),
        ("corpus", ("corpus",)),
        ("host", ("host",)),
        ("port", ("port",)),
        ("log_level", ("log_level",)),
        ("cache_dir", ("cache", "dir")),
        ("cache_mode", ("cache", "mode")),
        ("remote_url", ("remote", "url")),
        ("max_queries_per_request", ("limits", "max_queries_per_request")),
        ("max_body_bytes", ("limits", "max_body_bytes")),
    ]:
        value = getattr(args, flag)
        if value is None:
            continue
        section = data
        for part in key[:-1]:
            section = section.setdefault(part, {})
            if not isinstance(section, dict):
                raise ValueError(f"{args.config}: '{part}' must be a mapping of settings")
        section[key[-1]] = value
    return settings_from_dict(data, source=args.config or "command line")


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves, so port 0 yields a real port we can print before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    return sock


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from_args(args)
        settings.check_servable()
        from services.search_proxy.app import create_app

        failures: list[BaseException] = []
        server_box: list[Any] = []

        def on_fatal(exc: BaseException) -> None:
            failures.append(exc)
            if server_box:
                server_box[0].should_exit = True

        app = create_app(settings, on_fatal=on_fatal)
        sock = _bind(settings.host, settings.port)
    except ValueError as exc:
        print(f"search proxy: error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets its own logger to DEBUG
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"search proxy: serving {settings.backend} on http://{shown}:{port}", flush=True)
    config = uvicorn.Config(app, log_level=settings.log_level, access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    server_box.append(server)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal; end with our status then.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: sys.exit(1 if failures else 0))
    if args.parent_pid is not None:
        watch_parent(args.parent_pid)
    server.run(sockets=[sock])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

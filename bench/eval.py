"""Questions per second of `igpo eval`: the hf engine in-process vs the endpoint engine (the same model behind
`transformers serve`) at 1, 8 and 32 requests in flight, side by side in one run.

    python bench/eval.py -c configs/demo.yaml [--questions 32] [--concurrency 1 8 32] [--serve-arg=--continuous-batching]

Every configuration evaluates the same questions (the first N of `--data`, default world:test) greedily through
one search proxy started here (its start is not timed), all questions in one chunk so that up to N x turns
requests can be in flight; each is timed from the start of `run_eval` to its scores (model loading included,
the server's start not). The endpoint runs must give the hf run's scores (same model, greedy): the table says
whether they do.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _serve(model_dir: str, serve_args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli = str(Path(sys.executable).with_name("transformers"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                cli,
                "serve",
                model_dir,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--device",
                "cpu",
                *serve_args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"transformers serve exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=2, trust_env=False).status_code == 200:
                return proc, f"{base}/v1"
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise TimeoutError("transformers serve not ready after 300 s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", default="configs/demo.yaml")
    ap.add_argument("--data", nargs="+", default=["world:test"])
    ap.add_argument("--questions", type=int, default=32, help="first N questions of the data")
    ap.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 8, 32], help="endpoint requests in flight"
    )
    ap.add_argument("--serve-arg", action="append", default=[], help="extra `transformers serve` argument")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads of the hf engine (default: torch's)"
    )
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)

    import torch

    from igpo_rlhf.config import load_config
    from igpo_rlhf.eval.run import run_eval
    from services.search_proxy.launch import start_proxy

    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="bench_eval."))
    n = args.questions
    common = [*args.overrides, f"eval.limit_per_source={n}", f"eval.chunk_size={n}",
              f"rollout.batch_size={max(n, 1)}"]  # fmt: skip
    base = load_config(args.config, common)
    if not (Path(base.model.path) / "config.json").is_file():
        print(
            f"bench/eval.py: no model at {base.model.path}; build it with `make demo` or igpo make-tiny-model"
        )
        return 2
    from igpo_rlhf.data.datasets import load_questions

    load_questions(
        [d for d in args.data if d.startswith("world:")], world=base.data.world
    )  # render the world first
    results = []
    with start_proxy(base.search.proxy, port=0, log_file=root / "proxy.log") as proxy:
        search = [f"search.url={proxy.url}"]

        def timed(name: str, extra: list[str]) -> None:
            cfg = load_config(args.config, [*common, *search, *extra])
            t0 = time.perf_counter()
            scores = run_eval(cfg, root / name, data=args.data, log=lambda line: None)
            seconds = time.perf_counter() - t0
            results.append(
                {"name": name, "seconds": seconds, "qps": scores.avg.n / seconds, "scores": scores}
            )
            print(f"{name:<16} {scores.avg.n} questions in {seconds:6.1f} s = {scores.avg.n / seconds:6.2f} q/s  "
                  f"F1 {scores.avg.f1:.3f}  turns {scores.avg.turns:.2f}", flush=True)  # fmt: skip

        timed("hf", ["rollout.engine=hf"])
        server, url = _serve(base.model.path, args.serve_arg, root / "serve.log")
        try:
            for c in args.concurrency:
                timed(f"openai c={c}", ["rollout.engine=openai", f"rollout.openai.base_url={url}",
                                        f"rollout.openai.concurrency={c}"])  # fmt: skip
        finally:
            server.terminate()
            server.wait(30)

    hf = results[0]
    print(
        "\n| engine | questions/s | vs hf | vs c=1 | F1 | same scores as hf |\n|---|---:|---:|---:|---:|---|"
    )
    c1 = next((r for r in results if r["name"] == "openai c=1"), None)
    for r in results:
        same = json.dumps(r["scores"].to_json()["sources"]) == json.dumps(hf["scores"].to_json()["sources"])
        vs_c1 = f"{r['qps'] / c1['qps']:.2f}x" if c1 and r["name"].startswith("openai") else ""
        print(f"| {r['name']} | {r['qps']:.2f} | {r['qps'] / hf['qps']:.2f}x | {vs_c1} | {r['scores'].avg.f1:.3f} | "
              f"{'yes' if same else 'no'} |")  # fmt: skip
    print(f"\nbench/eval.py: {len(results)} runs of {hf['scores'].avg.n} questions; outputs in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the search proxy under concurrent load and with whole training batches in one request,
side by side with the same BM25 index in-process.

    .venv/bin/python bench/search_proxy.py                       # both parts, ~13 minutes on 2 cores
    .venv/bin/python bench/search_proxy.py --part grid           # concurrent clients only, ~2 minutes
    .venv/bin/python bench/search_proxy.py --part large          # whole batches only, ~11 minutes (*)
    .venv/bin/python bench/search_proxy.py --seconds 5 --config configs/search/bm25_wiki.yaml

One run, three ways of answering the same stream of questions (the QA sets of ../shared/data, ~9.7k
distinct questions, each asked once per cycle) with BM25 over the shipped 14k-passage corpus, top 3:

- in-process bm25s: one caller calling `bm25s.BM25.retrieve` on the proxy's saved index, 1 or 16 queries
  per call (tokenising with `bm25s.tokenize`, as a bm25s user would);
- in-process backend: one caller calling the proxy's own `Bm25Backend.retrieve` on that index;
- proxy: `python -m services.search_proxy` started with `start_proxy` (result cache off, so every query is
  retrieved), and 32 or 128 concurrent clients, each in a closed loop sending POST /retrieve with 1 or 16
  queries and parsing the JSON answer. The clients are a minimal keep-alive HTTP/1.1 client on asyncio
  streams in this process (like wrk: a load generator should spend as little CPU as it can, since client
  and server share this machine's cores).

Reported: throughput in queries/s, per-request latency p50/p99 (ms), errors (non-200 or a wrong number of
results), and the proxy's throughput over the in-process bm25s one with the same queries per call.
Wall-clock throughput on a shared machine moves with other load: the load average is printed with it.

Large requests (`--part large`): what Search-R1's client sends, one POST /retrieve holding a whole
training batch (2,560 = its GRPO run's 512 prompts x 5; 16,384 = 1,024 prompts x 16), topk 3,
return_scores true, parsed with `requests` as its client does (`response.json()['result']`). The queries
are distinct: the 9,773 questions, then the same again with " (2)" appended (a one-character token BM25
drops, so equal work, but no deduplication or caching helps). Four ways, in turn within each of
`--repeats` runs (medians reported): in-process bm25s answering all the queries in one `retrieve` call,
the proxy's own `Bm25Backend.retrieve` in-process, and two proxies: the default one (the request goes to
the retriever batching.max_queries = 256 queries at a time and the answer is streamed back) and one with
batching.max_queries raised to the request's size (one chunk: the whole answer built before it is sent).
Reported: wall seconds and their ratios, CPU seconds (robust to the other jobs on a shared machine: wall
time there mostly measures the scheduler), and the proxy process's peak RSS growth per request (VmHWM,
reset through /proc/PID/clear_refs before each request; each proxy starts fresh for its size).
(*) Most of it is the in-process bm25s baseline: bm25s 0.3.16's `retrieve` spends ~1.2 ms of CPU a
query, mostly in numpy's argpartition over a mostly-zero score array (~8x the proxy's scoring loop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bm25s  # noqa: E402
import requests  # noqa: E402

from services.search_proxy.backends.bm25 import Bm25Backend  # noqa: E402
from services.search_proxy.corpus import corpus_fingerprint, read_corpus  # noqa: E402
from services.search_proxy.launch import start_proxy  # noqa: E402
from services.search_proxy.settings import ProxySettings, load_settings  # noqa: E402

QA_FILES = ["train_stage2", "hotpotqa_500", "2wiki_500", "musique_500", "bamboogle"]
TOP_K = 3


@dataclass
class Stats:
    name: str
    per_call: int
    clients: int = 1
    latencies: list[float] = field(default_factory=list)  # seconds per request / call
    queries: int = 0
    errors: int = 0
    seconds: float = 0.0

    @property
    def qps(self) -> float:
        return self.queries / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0


def questions(shared: Path) -> list[str]:
    """Distinct questions of the R1-Searcher QA files, in file order."""
    seen: dict[str, None] = {}
    for name in QA_FILES:
        with (shared / "data" / "qa" / f"r1searcher_{name}.jsonl").open(encoding="utf-8") as handle:
            for line in handle:
                seen.setdefault(json.loads(line)["question"].strip(), None)
    return list(seen)


def batches(items: list[str], size: int) -> Iterator[list[str]]:
    """Endless consecutive batches, cycling through items."""
    i = 0
    while True:
        batch = [items[(i + j) % len(items)] for j in range(size)]
        i = (i + size) % len(items)
        yield batch


def in_process(
    name: str, call: Callable[[list[str]], object], items: list[str], per_call: int, seconds: float
) -> Stats:
    stats = Stats(name, per_call)
    source = batches(items, per_call)
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = next(source)
        t0 = time.perf_counter()
        call(batch)
        stats.latencies.append(time.perf_counter() - t0)
        stats.queries += len(batch)
    stats.seconds = time.perf_counter() - started
    return stats


async def _client(
    host: str, port: int, source: Iterator[list[str]], per_request: int, deadline: float, stats: Stats
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            body = json.dumps({"queries": next(source), "topk": TOP_K}).encode()
            request = (
                b"POST /retrieve HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            t0 = time.perf_counter()
            writer.write(request)
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            answer = await reader.readexactly(length)
            ok = status == 200 and len(json.loads(answer)["result"]) == per_request
            stats.latencies.append(time.perf_counter() - t0)
            stats.queries += per_request
            stats.errors += not ok
    finally:
        writer.close()


async def through_proxy(url: str, items: list[str], clients: int, per_request: int, seconds: float) -> Stats:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    source = batches(items, per_request)  # shared: concurrent clients never send the same questions
    warmup = Stats("warmup", per_request, clients)
    await asyncio.gather(
        *(
            _client(host, int(port), source, per_request, time.perf_counter() + 1.0, warmup)
            for _ in range(clients)
        )
    )
    stats = Stats("proxy /retrieve", per_request, clients)
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(
        *(_client(host, int(port), source, per_request, deadline, stats) for _ in range(clients))
    )
    stats.seconds = time.perf_counter() - started
    return stats


def distinct_queries(items: list[str], n: int) -> list[str]:
    """n distinct queries: the questions, then again with " (2)", " (3)"... (a one-character BM25 token)."""
    return [
        items[i % len(items)] + (f" ({i // len(items) + 1})" if i >= len(items) else "") for i in range(n)
    ]


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """One answer to a whole batch: wall and CPU seconds; for the proxy also answer size and peak RSS."""

    seconds: float
    cpu_seconds: float  # in-process: this process; proxy: the proxy process
    answer_mb: float = 0.0
    rss_mb: float = 0.0  # proxy RSS just before the request
    growth_mb: float = 0.0  # proxy peak RSS during the request, over rss_mb
    ok: bool = True


def in_process_run(call: Callable[[list[str]], object], queries: list[str]) -> Run:
    t0, c0 = time.perf_counter(), time.process_time()
    call(queries)
    return Run(time.perf_counter() - t0, time.process_time() - c0)


def proxy_run(url: str, pid: int, queries: list[str]) -> Run:
    """POST all queries at once and parse the answer, as Search-R1's client does."""
    payload = {"queries": queries, "topk": TOP_K, "return_scores": True}
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak RSS (VmHWM) restarts at the current RSS
    rss_kib, cpu0 = _kib(pid, "VmHWM"), _cpu_seconds(pid)
    t0 = time.perf_counter()
    response = requests.post(f"{url}/retrieve", json=payload)
    result = response.json()["result"]
    seconds = time.perf_counter() - t0
    growth_kib = _kib(pid, "VmHWM") - rss_kib
    ok = response.status_code == 200 and len(result) == len(queries)
    return Run(
        seconds, _cpu_seconds(pid) - cpu0, len(response.content) / 1e6, rss_kib / 1024, growth_kib / 1024, ok
    )


def large_part(
    settings: ProxySettings,
    items: list[str],
    bm25s_call: Callable[[list[str]], object],
    backend: Bm25Backend,
    sizes: list[int],
    repeats: int,
) -> None:
    """Whole training batches in one request: proxy vs in-process, and the proxy's peak memory.

    The four ways run in turn within each repeat (so a change in the machine's load hits all of them);
    each proxy is started fresh for its size, so its first request shows the one-time warm-up too.
    """
    paths = {
        "bm25s": "in-process bm25s, one retrieve call",
        "backend": "in-process backend",
        "chunked": "proxy, default: 256-query chunks, streamed",
        "whole": "proxy, one chunk: answer built whole",
    }
    runs: dict[tuple[str, int], list[Run]] = {}
    for n in sizes:
        queries = distinct_queries(items, n)
        whole = settings.batching.model_copy(update={"max_queries": n})
        with (
            start_proxy(settings) as chunked_proxy,
            start_proxy(settings.model_copy(update={"batching": whole})) as whole_proxy,
        ):
            for repeat in range(repeats):
                print(f"{n} queries, run {repeat + 1} of {repeats} ...", flush=True)
                runs.setdefault(("bm25s", n), []).append(in_process_run(bm25s_call, queries))
                own = in_process_run(lambda b: backend.retrieve(b, TOP_K), queries)
                runs.setdefault(("backend", n), []).append(own)
                for path, proxy in [("chunked", chunked_proxy), ("whole", whole_proxy)]:
                    runs.setdefault((path, n), []).append(proxy_run(proxy.url, proxy.pid, queries))

    print(
        f"\nlarge requests: one POST /retrieve, topk {TOP_K}, return_scores; median of {repeats} runs; "
        f"CPU = this process's (in-process) or the proxy process's; peak RSS growth of the proxy in its "
        f"first request (fresh process) and the largest in later ones\n"
    )
    print(
        "| queries | path | seconds | queries/s | vs in-process bm25s | vs in-process backend | CPU s "
        "| CPU / backend CPU | answer MB | proxy RSS MB | peak RSS growth, 1st / later MB | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        median = {
            path: (
                statistics.median(r.seconds for r in runs[path, n]),
                statistics.median(r.cpu_seconds for r in runs[path, n]),
            )
            for path in paths
        }
        base, own = median["bm25s"][0], median["backend"]
        for path, label in paths.items():
            seconds, cpu = median[path]
            cells = [
                str(n),
                label,
                f"{seconds:.2f}",
                f"{n / seconds:.0f}",
                f"{base / seconds:.2f}x",
                f"{own[0] / seconds:.2f}x",
                f"{cpu:.2f}",
                f"{cpu / own[1]:.2f}x",
            ]
            if path in ("chunked", "whole"):
                first, later = runs[path, n][0], runs[path, n][1:]
                later_growth = f"{max(r.growth_mb for r in later):.1f}" if later else "-"
                errors = sum(not r.ok for r in runs[path, n])
                cells += [
                    f"{first.answer_mb:.1f}",
                    f"{first.rss_mb:.0f}",
                    f"{first.growth_mb:.1f} / {later_growth}",
                    str(errors),
                ]
            else:
                cells += ["", "", "", ""]
            print("| " + " | ".join(cells) + " |")


def grid_part(
    settings: ProxySettings,
    items: list[str],
    bm25s_call: Callable[[list[str]], object],
    backend: Bm25Backend,
    seconds: float,
) -> None:
    """Concurrent closed-loop clients with 1- and 16-query requests vs one in-process caller."""
    results: list[Stats] = []
    load_before = os.getloadavg()[0]
    for per_call in (1, 16):
        results.append(in_process("in-process bm25s", bm25s_call, items, per_call, seconds))
        results.append(
            in_process("in-process backend", lambda b: backend.retrieve(b, TOP_K), items, per_call, seconds)
        )
    with start_proxy(settings) as proxy:
        for clients in (32, 128):
            for per_request in (1, 16):
                results.append(asyncio.run(through_proxy(proxy.url, items, clients, per_request, seconds)))
    load_after = os.getloadavg()[0]

    baseline = {s.per_call: s.qps for s in results if s.name == "in-process bm25s"}
    print(
        f"\nload average (1 min): {load_before:.1f} before, {load_after:.1f} after; {os.cpu_count()} cores\n"
    )
    print("| path | clients | queries/request | queries/s | vs in-process bm25s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for s in results:
        ratio = s.qps / baseline[s.per_call]
        print(
            f"| {s.name} | {s.clients} | {s.per_call} | {s.qps:.0f} | {ratio:.2f}x | "
            f"{s.percentile(0.5):.1f} | {s.percentile(0.99):.1f} | {s.errors} |"
        )
    proxy16 = [s for s in results if s.name.startswith("proxy") and s.per_call == 16]
    p99_32x1 = next(s for s in results if s.name.startswith("proxy") and s.clients == 32 and s.per_call == 1)
    errors = sum(s.errors for s in results)
    print()
    print(
        f"target: proxy >= 0.80x in-process with 16-query requests: "
        f"{', '.join(f'{s.clients} clients {s.qps / baseline[16]:.2f}x' for s in proxy16)}"
    )
    print(f"target: p99 < 100 ms, 32 clients x 1 query: {p99_32x1.percentile(0.99):.1f} ms")
    print(f"target: zero errors: {errors} errors")
    median_latency = statistics.median(s.percentile(0.5) for s in proxy16)
    print(
        f"(16-query requests: median p50 {median_latency:.1f} ms, bounded below by queueing at this concurrency)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/search/bm25_wiki.yaml")
    parser.add_argument(
        "--shared", default=str(ROOT.parent / "shared"), help="folder holding data/qa and data/corpus"
    )
    parser.add_argument("--part", choices=["all", "grid", "large"], default="all", help="which part to run")
    parser.add_argument("--seconds", type=float, default=10.0, help="grid: measured seconds per scenario")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[2560, 16384], help="large: queries in one request"
    )
    parser.add_argument("--repeats", type=int, default=3, help="large: runs per measurement (median)")
    args = parser.parse_args()

    settings = load_settings(args.config)
    settings = settings.model_copy(update={"cache": settings.cache.model_copy(update={"mode": "off"})})
    items = questions(Path(args.shared))
    print(
        f"{len(items)} distinct questions; corpus {settings.corpus}; bm25 {settings.bm25.model_dump()}",
        flush=True,
    )

    # The proxy's own index, saved under the cache dir (built here if missing): both sides use the same one.
    backend = Bm25Backend(
        read_corpus(settings.corpus),
        settings.bm25,
        index_root=settings.cache.dir / "index",
        fingerprint=corpus_fingerprint(settings.corpus),
    )
    stopwords = "en" if settings.bm25.stopwords == "en" else None

    def bm25s_call(batch: list[str]) -> object:
        tokens = bm25s.tokenize(batch, stopwords=stopwords, return_ids=False, show_progress=False)
        return backend.retriever.retrieve(tokens, k=TOP_K, show_progress=False)

    if args.part in ("all", "grid"):
        grid_part(settings, items, bm25s_call, backend, args.seconds)
    if args.part in ("all", "large"):
        large_part(settings, items, bm25s_call, backend, args.sizes, args.repeats)
    print(f"\ndone: {args.part} part(s) of the search proxy benchmark printed above (tables in Markdown)")


if __name__ == "__main__":
    main()

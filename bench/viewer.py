"""How long `igpo view` takes to open a run of 100k trajectories (target: the pages a user opens first in < 2 s).

    python bench/viewer.py [--trajectories 100000] [--per-step 512] [--tokens 2000] [--dir DIR] [--browser]
    (make bench-viewer)

Writes a synthetic run once (DIR, default .cache/bench/viewer_run; rewritten only when the sizes change):
`--trajectories` rows in the trainer's rollouts layout, `--per-step` per step file (32 prompts x 16 = 512, the
paper's setting), each row `--tokens` token ids long (prompt, 3 turns, 2 observations) with its segment texts,
beliefs and advantages, plus a metrics.jsonl line per step. Then starts `igpo view DIR` (the real command, its
own process) and times, from a client on the same machine, each request sequence a page makes:

    overview        GET /  + /api/info + /api/metrics
    list (cold)     GET /trajectories + /api/info + /api/trajectories (a step file indexed now: the default
                    last step, which may be partial, and step 1, a full one)
    list (warm)     the same again
    trajectory      GET /api/trajectory/1/0 (the whole row + its group's credit) + its tokens
    group           GET /api/group/1/0
    all steps       /api/trajectories?part=all (every file indexed: the slow path, on demand only)
    all, filtered   a question filter + sort by IG over all rows, once indexed

With --browser it also opens the list page of step 2 (not indexed yet) in headless Chromium (Debian's,
/usr/bin/chromedriver) and times navigation start -> the table drawn. The run's files were just written, so they are in the page cache: a
cold disk adds its read time (one step file, ~20 MB at 2,000 tokens a row) to "list (cold)".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
ROOT = Path(__file__).resolve().parents[1]

WORDS = ("river", "founded", "company", "born", "city", "capital", "author", "novel", "team", "league", "year",
         "museum", "painter", "king", "queen", "bridge", "island", "mountain", "language", "school")  # fmt: skip


def text(rng: random.Random, n_chars: int) -> str:
    words = []
    size = 0
    while size < n_chars:
        w = rng.choice(WORDS)
        words.append(w)
        size += len(w) + 1
    return " ".join(words)


def synthetic_row(rng: random.Random, step: int, group: int, sample: int, tokens: int) -> dict:
    """One trajectory in the rollouts layout: prompt 10% of the tokens, 3 turns of 5% each, 2 observations."""
    turns = 3
    prompt_len = tokens // 10
    turn_len = tokens // 20
    obs_len = (tokens - prompt_len - turns * turn_len) // (turns - 1)
    ids = [rng.randrange(150_000) for _ in range(tokens)]
    spans, obs, cursor = [], [], prompt_len
    for t in range(turns):
        spans.append([cursor, cursor + turn_len])
        cursor += turn_len
        if t < turns - 1:
            n = obs_len if t < turns - 2 else tokens - cursor - turn_len  # the last one takes the rest
            obs.append([cursor, cursor + n])
            cursor += n
    answer = rng.choice([None, "Paris", "the river"])
    beliefs = sorted(-rng.uniform(0.2, 8.0) for _ in range(turns))
    f1 = 1.0 if answer == "Paris" else 0.0
    return {
        "group_id": group, "sample_id": sample, "question": f"Q{step}-{group}: which {text(rng, 60)}?",
        "golds": ["Paris"], "meta": {"id": f"q{group}"}, "token_ids": ids, "prompt_len": prompt_len,
        "turn_spans": spans, "obs_spans": obs, "belief_points": [prompt_len] + [b for _, b in obs],
        "actions": [{"kind": "search", "queries": [text(rng, 30)], "answer": None, "error": None}] * (turns - 1)
        + [{"kind": "answer" if answer else "invalid", "queries": [], "answer": answer, "error": None}],
        "answer": answer, "finish_reason": "answer" if answer else "invalid", "n_searches": turns - 1,
        "n_search_errors": 0, "generate_seconds": 0.1, "search_seconds": 0.01, "weights_version": step - 1,
        "prompt_text": text(rng, 4 * prompt_len), "turn_texts": [text(rng, 4 * turn_len) for _ in spans],
        "obs_texts": [text(rng, 4 * obs_len) for _ in obs], "step": step, "estimator": "igpo",
        "outcome_reward": f1 if answer else -2.0, "f1": f1, "em": f1, "beliefs": beliefs,
        "turn_rewards": [math.exp(beliefs[t]) - math.exp(beliefs[t - 1]) for t in range(1, turns)] + [f1],
        "turn_advantages": [0.0] * turns,
    }  # fmt: skip


def write_run(directory: Path, trajectories: int, per_step: int, tokens: int) -> int:
    """The synthetic run (kept when its stamp says it has these sizes); returns the number of steps."""
    steps = math.ceil(trajectories / per_step)
    stamp = directory / "bench_stamp.json"
    want = {"trajectories": trajectories, "per_step": per_step, "tokens": tokens}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return steps
    (directory / "rollouts").mkdir(parents=True, exist_ok=True)
    for old in (directory / "rollouts").glob("step_*.jsonl"):
        old.unlink()
    rng = random.Random(0)
    t0 = time.perf_counter()
    with (directory / "metrics.jsonl").open("w") as metrics:
        for step in range(1, steps + 1):
            n = min(per_step, trajectories - (step - 1) * per_step)
            rows = [synthetic_row(rng, step, k // 16, k % 16, tokens) for k in range(n)]
            path = directory / "rollouts" / f"step_{step:05d}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            metrics.write(json.dumps({"step": step, "reward/f1": rng.random(), "ig/mean": rng.random() / 10,
                                      "policy/kl": rng.random() / 1e3, "time/step": 30.0}) + "\n")  # fmt: skip
            if step % 20 == 0:
                print(f"  wrote {step}/{steps} step files ({time.perf_counter() - t0:.0f}s)", flush=True)
    (directory / "config.yaml").write_text("algorithm:\n  estimator: igpo\nmodel:\n  path: /nonexistent\n")
    stamp.write_text(json.dumps(want))
    return steps


def timed(client, calls: list[tuple[str, dict]]) -> float:
    t0 = time.perf_counter()
    for path, params in calls:
        resp = client.get(path, params=params)
        resp.raise_for_status()
        resp.read()
    return time.perf_counter() - t0


def browser_open(url: str) -> float:
    """Headless Chromium: navigation start -> the list table drawn (performance.now() at that moment)."""
    import tempfile

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tempfile.mkdtemp()}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(url)
        WebDriverWait(driver, 120).until(lambda d: d.find_elements("css selector", "#traj-table tbody tr"))
        return driver.execute_script("return performance.now()") / 1000.0
    finally:
        driver.quit()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trajectories", type=int, default=100_000)
    ap.add_argument("--per-step", type=int, default=512, help="rows per step file (32 prompts x 16)")
    ap.add_argument("--tokens", type=int, default=2000, help="token ids per row")
    ap.add_argument("--dir", type=Path, default=ROOT / ".cache" / "bench" / "viewer_run")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the warm measurements (median)")
    ap.add_argument("--browser", action="store_true", help="also time the list page in headless Chromium")
    args = ap.parse_args(argv)

    import httpx

    print(
        f"synthetic run: {args.trajectories} trajectories, {args.per_step} per step, {args.tokens} tokens each"
    )
    steps = write_run(args.dir, args.trajectories, args.per_step, args.tokens)
    size = sum(p.stat().st_size for p in (args.dir / "rollouts").iterdir())
    print(f"  {args.dir}: {steps} step files, {size / 1e9:.2f} GB")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "igpo_rlhf.cli", "view", str(args.dir), "--port", "0"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = proc.stdout.readline()
        started = time.perf_counter() - t0
        url = re.search(r"http://[^ ]+/", line).group(0).rstrip("/")
        last = str(steps)
        results: list[tuple[str, float]] = [("igpo view start (process start -> listening)", started)]
        with httpx.Client(base_url=url, timeout=600) as client:
            overview = [("/", {}), ("/api/info", {}), ("/api/metrics", {})]
            results.append(("overview: / + info + metrics", timed(client, overview)))

            def list_calls(part: str) -> list[tuple[str, dict]]:
                return [
                    ("/trajectories", {"part": part}),
                    ("/api/info", {}),
                    ("/api/trajectories", {"part": part}),
                ]

            n_last = args.trajectories - (steps - 1) * args.per_step
            results.append(
                (f"list, cold: the last step ({n_last} rows), the default", timed(client, list_calls(last)))
            )
            results.append((f"list, cold: step 1 ({args.per_step} rows)", timed(client, list_calls("1"))))
            warm = statistics.median(timed(client, list_calls("1")) for _ in range(args.repeats))
            results.append(("list, warm", warm))
            traj = [("/api/trajectory/1/0", {}), ("/api/trajectory/1/0/tokens", {})]
            results.append(("trajectory page (row + group credit + tokens)", timed(client, traj)))
            results.append(("group page", timed(client, [("/api/group/1/0", {})])))
            if args.browser:  # a step nobody opened yet: cold, like the first visit
                results.append(("browser: list page of step 2 (cold), navigation -> table drawn",
                                browser_open(url + "/trajectories?part=2")))  # fmt: skip
            everything = [("/api/trajectories", {"part": "all"})]
            results.append((f"all steps, cold: {args.trajectories} rows indexed", timed(client, everything)))
            filtered = [
                ("/api/trajectories", {"part": "all", "q": "river", "sort": "ig", "outcome": "correct"})
            ]
            median = statistics.median(timed(client, filtered) for _ in range(args.repeats))
            results.append(("all steps, warm: filter + sort by IG", median))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"\n{'what':<58} {'seconds':>8}")
    for name, seconds in results:
        print(f"{name:<58} {seconds:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

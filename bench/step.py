"""Time per training step, IGPO vs GRPO, side by side on the same config (target: IGPO <= 1.15x GRPO).

    python bench/step.py -c configs/demo.yaml [--steps 5] [--set key=value ...]      (make bench-step)

Both runs share one local Ray and one search proxy, start from the same weights with the same seed, and
their steps are interleaved (grpo 1, igpo 1, igpo 2, grpo 2, ...; the order alternates) so that load
from anything else on the machine hits both alike. Step 1 of each is warm-up and left out; the table
gives the median of the other steps for the step and each phase (time/* metrics of the trainer; scoring
and reference run concurrently), the rollout sizes behind them, and the IGPO / GRPO ratio.
IGPO's extra work is the belief scorer's probe blocks (one per turn, in the same pass as the old
log-probs) and the IG reward assembly; everything else is the same pipeline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PHASES = ("step", "rollout", "scoring", "reference", "update", "sync")
SIZES = ("rollout/total_tokens", "rollout/turns", "rollout/response_tokens")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", default="configs/demo.yaml")
    ap.add_argument("--steps", type=int, default=5, help="steps per estimator (the first is warm-up)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    if args.steps < 2:
        ap.error("--steps must be >= 2 (step 1 is warm-up)")

    import ray

    from igpo_rlhf.config import load_config
    from igpo_rlhf.ray.train import prepare
    from igpo_rlhf.ray.trainer import Trainer
    from services.search_proxy.launch import start_proxy

    root = Path(tempfile.mkdtemp(prefix="bench_step."))
    common = [*args.overrides, f"train.steps={args.steps}", "logging.progress_bar=false", "logging.tensorboard=false",
              "logging.save_rollouts=false"]  # fmt: skip
    cfgs = {
        est: load_config(
            args.config, [*common, f"algorithm.estimator={est}", f"logging.run_dir={root / est}"]
        )
        for est in ("grpo", "igpo")
    }
    prompts = prepare(cfgs["igpo"]).prompts
    history: dict[str, list[dict[str, float]]] = {"grpo": [], "igpo": []}
    t0 = time.time()
    with start_proxy(cfgs["igpo"].search.proxy, port=0, log_file=root / "proxy.log") as proxy:
        # two runs' actors at once: twice the logical CPUs of one run (they take turns, never run together)
        ray.init(address="local", include_dashboard=False, num_cpus=2 * (os.cpu_count() or 2),
                 runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})  # fmt: skip
        trainers = {est: Trainer(cfg, prompts, proxy.url) for est, cfg in cfgs.items()}
        try:
            for step in range(1, args.steps + 1):
                order = ("grpo", "igpo") if step % 2 else ("igpo", "grpo")
                for est in order:
                    history[est].append(trainers[est].train_step(step))
                    print(f"{est} step {step}: {history[est][-1]['time/step']:.2f}s", flush=True)
        finally:
            for trainer in trainers.values():
                trainer.close()
            ray.shutdown()

    rows = []
    for phase in PHASES:
        key = f"time/{phase}"
        g, i = (statistics.median(m[key] for m in history[e][1:]) for e in ("grpo", "igpo"))
        rows.append((f"{phase} (s)", g, i, i / g if g > 0 else float("nan")))
    for key in SIZES:
        g, i = (statistics.fmean(m[key] for m in history[e][1:]) for e in ("grpo", "igpo"))
        rows.append((f"{key} (mean)", g, i, i / g if g > 0 else float("nan")))
    print()
    print(f"`python bench/step.py -c {args.config} --steps {args.steps}"
          f"{''.join(' --set ' + o for o in args.overrides)}` ({time.time() - t0:.0f}s wall, median of steps "
          f"2-{args.steps}, {cfgs['igpo'].train.prompts_per_step} prompts x {cfgs['igpo'].rollout.n_samples})")  # fmt: skip
    print()
    print("| | GRPO | IGPO | IGPO / GRPO |")
    print("|---|---:|---:|---:|")
    for name, g, i, r in rows:
        print(f"| {name} | {g:.3f} | {i:.3f} | {r:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""IGPO vs GRPO vs PPO, measured: held-out F1 on the built-in world over training, for several seeds.

    python bench/learning.py [-c configs/demo.yaml] [--seeds 0 1 2] [--steps 60] [--eval-every 10]
                             [--estimators grpo igpo igpo_2026 ppo] [--out runs/learning] [--set k=v ...]
    make bench-learning BENCH_ARGS="--seeds 0 1 2"

Every (estimator, seed) is one `igpo train` run of the config with validation on the world's held-out split
(`data.eval=[world:test]`, greedy, every `--eval-every` steps and at step 0); runs share one local Ray and
one search proxy and go one after another. The estimators:

    grpo        outcome only, group-normalised (algorithm.estimator=grpo)
    igpo        the paper's formula: IG = b_t - b_{t-1}, joint normalisation (prob_diff, joint)
    igpo_2026   the authors' 2026 recipe: IG = log b_t - log b_{t-1}, separate normalisation
    ppo         GAE with a critic (algorithm.estimator=ppo)
    igpo_2026_half  igpo_2026 with algorithm.ig_coef=0.5 (not run by default: --estimators ... igpo_2026_half)

It writes into --out: one run directory per (estimator, seed), `learning_steps.png` and
`learning_rollouts.png` (held-out F1 against steps and against rollouts consumed: the mean over seeds with a
95% interval, one line per estimator, drawn by `igpo_rlhf.viewer.plot.plot_runs`), `learning.md` (the table below, and held-out F1 by hop count) and
`learning.json` (every number), then prints the table. Columns: held-out F1 at step 0 and at the last step
(mean ± 95% half-width over seeds), the first step whose held-out F1 reaches --threshold (mean over seeds
of each run's first such step; "-" when a run never does), the area under the held-out F1 curve over steps
(normalised by the steps: the mean F1 over training), the share of zero-variance groups (groups whose
outcomes are all equal: no GRPO signal), the IG reward's mean and positive share (igpo), and seconds per step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ESTIMATORS = {
    "grpo": ["algorithm.estimator=grpo"],
    "igpo": ["algorithm.estimator=igpo", "algorithm.ig_kind=prob_diff", "algorithm.norm=joint"],
    "igpo_2026": ["algorithm.estimator=igpo", "algorithm.ig_kind=log_prob_diff", "algorithm.norm=separate"],
    "ppo": ["algorithm.estimator=ppo"],
    # the fix the analysis in bench/RESULTS.md points to: the 2026 recipe with the IG terms at half weight
    "igpo_2026_half": [
        "algorithm.estimator=igpo",
        "algorithm.ig_kind=log_prob_diff",
        "algorithm.norm=separate",
        "algorithm.ig_coef=0.5",
    ],
}
DEFAULT_ESTIMATORS = ["grpo", "igpo", "igpo_2026", "ppo"]
T975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and 95% half-width (Student's t) of the values (half-width 0 for one value)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, 0.0
    return m, T975.get(len(values), 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_summary(run_dir: Path, threshold: float) -> dict:
    """One run's numbers from its metrics.jsonl and validation rollouts."""
    lines = read_jsonl(run_dir / "metrics.jsonl")
    evals = [(m["step"], m["eval/f1"]) for m in lines if m.get("eval/f1") is not None]
    steps = [m for m in lines if m["step"] > 0]
    reach = next((s for s, f in evals if f >= threshold), None)
    # area under the held-out curve (trapezoids over steps), divided by the steps: the mean F1 during training
    auc = sum((s1 - s0) * (f0 + f1) / 2 for (s0, f0), (s1, f1) in zip(evals, evals[1:], strict=False))
    auc /= max(evals[-1][0] - evals[0][0], 1)

    def f1_by_hops(step: int) -> dict[str, float]:
        """Mean held-out F1 by the question's hop count, from the validation rollouts of `step`."""
        by_hops: dict[str, list[float]] = {}
        for row in read_jsonl(run_dir / "eval_rollouts" / f"step_{step:05d}.jsonl"):
            by_hops.setdefault(str(row["meta"].get("hops")), []).append(row["f1"])
        return {h: statistics.fmean(v) for h, v in sorted(by_hops.items())}

    def avg(key: str) -> float | None:
        vals = [m[key] for m in steps if m.get(key) is not None]
        return statistics.fmean(vals) if vals else None

    return {
        "eval_curve": evals,
        "f1_start": evals[0][1],
        "f1_end": evals[-1][1],
        "best_f1": max(f for _, f in evals),
        "steps_to_threshold": reach,
        "auc": auc,
        "f1_by_hops_start": f1_by_hops(evals[0][0]),
        "f1_by_hops_end": f1_by_hops(evals[-1][0]),
        "zero_var_groups": avg("adv/zero_var_groups"),
        "distinct_frac": avg("rollout/distinct_frac"),
        "ig_mean": avg("ig/mean"),
        "ig_positive": avg("ig/positive_frac"),
        "train_f1": avg("reward/f1"),
        "searches": avg("rollout/searches"),
        "kl_end": steps[-1].get("policy/kl") if steps else None,
        "seconds_per_step": avg("time/step"),
    }


def fmt_ci(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    m, h = mean_ci(values)
    return f"{m:.{digits}f} ± {h:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def table(summaries: dict[str, list[dict]], threshold: float) -> str:
    head = (
        f"| estimator | seeds | held-out F1 step 0 | held-out F1 last | best | steps to F1 ≥ {threshold:g} | "
        "AUC (mean F1) | zero-var groups | IG mean | IG > 0 | s/step |"
    )
    out = [head, "|" + "---|" * 11]
    for est, runs in summaries.items():
        reach = [r["steps_to_threshold"] for r in runs if r["steps_to_threshold"] is not None]
        reach_s = (
            f"{statistics.fmean(reach):.0f} ({len(reach)}/{len(runs)} runs)"
            if reach
            else f"- (0/{len(runs)})"
        )

        def col(key: str, digits: int = 3, runs: list[dict] = runs) -> str:
            vals = [r[key] for r in runs if r[key] is not None]
            return fmt_ci(vals, digits) if vals else "-"

        out.append(
            f"| {est} | {len(runs)} | {col('f1_start')} | {col('f1_end')} | {col('best_f1')} | {reach_s} | "
            f"{col('auc')} | {col('zero_var_groups', 2)} | {col('ig_mean', 4)} | {col('ig_positive', 2)} | "
            f"{col('seconds_per_step', 1)} |"
        )
    return "\n".join(out)


def hops_table(summaries: dict[str, list[dict]]) -> str:
    hops = sorted({h for runs in summaries.values() for r in runs for h in r["f1_by_hops_end"]})
    out = [
        "| estimator | " + " | ".join(f"{h}-hop: step 0 → last" for h in hops) + " |",
        "|" + "---|" * (len(hops) + 1),
    ]
    for est, runs in summaries.items():
        cells = []
        for h in hops:
            start = [r["f1_by_hops_start"][h] for r in runs if h in r["f1_by_hops_start"]]
            end = [r["f1_by_hops_end"][h] for r in runs if h in r["f1_by_hops_end"]]
            cells.append(f"{statistics.fmean(start):.3f} → {fmt_ci(end)}")
        out.append(f"| {est} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/learning.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("-c", "--config", default="configs/demo.yaml")
    ap.add_argument("--estimators", nargs="+", default=DEFAULT_ESTIMATORS, choices=list(ESTIMATORS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (default: the config's)")
    ap.add_argument(
        "--eval-every", type=int, default=None, help="validation interval (default: the config's)"
    )
    ap.add_argument("--threshold", type=float, default=None, help="held-out F1 for 'steps to threshold'")
    ap.add_argument("--out", default="runs/learning")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--reuse", action="store_true", help="skip runs whose directory already finished")
    args = ap.parse_args(argv)

    import ray

    from igpo_rlhf.config import load_config
    from igpo_rlhf.ray.train import prepare
    from igpo_rlhf.ray.trainer import Trainer
    from igpo_rlhf.viewer.plot import plot_runs
    from services.search_proxy.launch import start_proxy

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = list(args.overrides)
    if args.steps is not None:
        common.append(f"train.steps={args.steps}")
    if args.eval_every is not None:
        common.append(f"eval.every_n_steps={args.eval_every}")
    common += ["logging.progress_bar=false", "logging.tensorboard=false", "checkpoint.every_n_steps=100000"]
    base = load_config(args.config, common)
    if base.eval.every_n_steps == 0 or not base.data.eval:
        ap.error("the config validates nothing: set data.eval and eval.every_n_steps (or --eval-every)")
    if not (Path(base.model.path) / "config.json").is_file():  # the config's tiny model, built on its world
        from igpo_rlhf.world.tiny_model import main as make_tiny_model

        print(f"building the tiny model {base.model.path} for {args.config}", flush=True)
        if make_tiny_model([base.model.path, "-c", args.config]) != 0:
            return 2
    threshold = args.threshold
    runs: dict[str, list[Path]] = {est: [] for est in args.estimators}
    t0 = time.time()
    cache = Path(tempfile.mkdtemp(prefix="bench_learning."))
    proxy_settings = base.search.proxy.model_copy(
        update={"cache": base.search.proxy.cache.model_copy(update={"mode": "off", "dir": cache})}
    )
    # the world is rendered before the proxy serves its corpus (the run directories are the bench's own)
    inputs = prepare(
        base.model_copy(update={"logging": base.logging.model_copy(update={"run_dir": str(out / "_")})})
    )
    with start_proxy(proxy_settings, port=0, log_file=out / "search_proxy.log") as proxy:
        ray.init(address="local", include_dashboard=False, num_cpus=os.cpu_count(),
                 runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})  # fmt: skip
        try:
            for seed in args.seeds:
                for est in args.estimators:
                    run_dir = out / f"{est}-seed{seed}"
                    runs[est].append(run_dir)
                    done = run_dir / "metrics.jsonl"
                    if args.reuse and done.is_file() and read_jsonl(done)[-1]["step"] == base.train.steps:
                        print(f"[{time.time() - t0:6.0f}s] {est} seed {seed}: reused {run_dir}", flush=True)
                        continue
                    cfg = load_config(
                        args.config,
                        [*common, *ESTIMATORS[est], f"train.seed={seed}", f"logging.run_dir={run_dir}"],
                    )
                    for stale in (
                        "metrics.jsonl",
                        "eval_rollouts",
                        "rollouts",
                        "checkpoints",
                        "events.jsonl",
                    ):
                        path = run_dir / stale
                        if path.is_dir():
                            import shutil

                            shutil.rmtree(path)
                        elif path.exists():
                            path.unlink()
                    print(f"[{time.time() - t0:6.0f}s] {est} seed {seed} → {run_dir}", flush=True)
                    trainer = Trainer(cfg, inputs.prompts, proxy.url, eval_prompts=inputs.eval_prompts)
                    try:
                        trainer.run()
                    finally:
                        trainer.close()
        finally:
            ray.shutdown()

    summaries = {
        est: [run_summary(d, threshold if threshold is not None else 1.0) for d in dirs]
        for est, dirs in runs.items()
    }
    if threshold is None:  # halfway from the mean start to the best mean end
        start = statistics.fmean(r["f1_start"] for rs in summaries.values() for r in rs)
        end = max(statistics.fmean(r["f1_end"] for r in rs) for rs in summaries.values())
        threshold = round(start + 0.5 * (end - start), 3)
        summaries = {est: [run_summary(d, threshold) for d in dirs] for est, dirs in runs.items()}
    dirs = [d for est in runs for d in runs[est]]
    labels = [est for est in runs for _ in runs[est]]
    title = f"held-out F1 on world:test ({len(args.seeds)} seeds, mean and 95% CI)"
    plot_runs(dirs, ["eval/f1"], out / "learning_steps.png", labels=labels, x="step", title=title)
    plot_runs(dirs, ["eval/f1"], out / "learning_rollouts.png", labels=labels, x="rollouts", title=title)
    text = "\n\n".join([table(summaries, threshold), hops_table(summaries)])
    (out / "learning.md").write_text(text + "\n", encoding="utf-8")
    (out / "learning.json").write_text(
        json.dumps(
            {
                "threshold": threshold,
                "runs": {e: [str(d) for d in ds] for e, ds in runs.items()},
                "summaries": summaries,
            },
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    print(text)
    print(
        f"bench/learning.py: {len(dirs)} runs in {(time.time() - t0) / 60:.1f} min → {out}/learning.md, learning_steps.png, learning_rollouts.png"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`igpo plot RUN_DIR ... -o FILE.png [--metric NAME ...] [--x step|time|rollouts] [--label NAME ...]`:
metrics of one or several runs, one subplot per metric, one line per run (the legend names each run by its
directory), for papers and READMEs. Runs given the same `--label` (e.g. the seeds of one setting) are drawn
as one line, their mean, with a shaded 95% confidence interval (Student's t over the runs). From Python
(the learning benchmark does):

    from igpo_rlhf.viewer.plot import plot_runs
    fig = plot_runs(["runs/igpo", "runs/grpo"], ["reward/f1", "eval/f1"], "curves.png")
    fig = plot_runs(dirs, ["eval/f1"], "f1.png", labels=["igpo"] * 3 + ["grpo"] * 3, x="rollouts")

Without metrics: the defaults below that at least one run logged. An unknown metric is a ValueError listing
the metrics the runs have.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from igpo_rlhf.viewer.metrics import MetricsTable, read_metrics

DEFAULT_METRICS = ("reward/f1", "eval/f1", "ig/mean", "policy/kl", "policy/entropy", "rollout/searches")
X_AXES = ("step", "time", "rollouts")
# Student's t quantile t_{0.975, n-1} for a 95% interval of a mean over n runs (n = 2..10; normal beyond)
T975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}
COLORS = ("#2f6fd0", "#e07b22", "#2e9e5b", "#c8414b", "#7b5cc4", "#8c6a4f", "#d45fa6", "#6b7480")


@dataclass
class Run:
    label: str  # the legend entry: the directory name (with its parent when two runs share a name)
    path: Path
    metrics: MetricsTable


def load_runs(run_dirs: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[Run]:
    """Each run directory's metrics.jsonl; ValueError naming a directory without one."""
    if not run_dirs:
        raise ValueError("no run directory given; pass at least one (a directory holding metrics.jsonl)")
    paths = [Path(d) for d in run_dirs]
    for p in paths:
        if not (p / "metrics.jsonl").is_file():
            raise ValueError(
                f"{p}: no metrics.jsonl; expected a run directory (logging.run_dir of `igpo train`)"
            )
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} runs; give one label per run")
    if labels is None:
        names = [p.resolve().name for p in paths]
        labels = [
            f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n
            for p, n in zip(paths, names, strict=True)
        ]
    return [Run(label, p, read_metrics(p / "metrics.jsonl")) for label, p in zip(labels, paths, strict=True)]


def choose_metrics(runs: Sequence[Run], metrics: Sequence[str] | None) -> list[str]:
    """The metrics to plot: the given ones (each logged by some run), or the defaults some run logged."""
    available = sorted({name for run in runs for name in run.metrics.names})
    if not metrics:
        chosen = [m for m in DEFAULT_METRICS if m in available]
        if not chosen:
            raise ValueError(
                f"none of the default metrics ({', '.join(DEFAULT_METRICS)}) was logged by these runs; pick "
                f"some with --metric; available: {', '.join(available) or 'none (no step logged yet)'}"
            )
        return chosen
    unknown = [m for m in metrics if m not in available]
    if unknown:
        raise ValueError(
            f"unknown metric{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: no run logged "
            f"{'them' if len(unknown) > 1 else 'it'}; available: {', '.join(available) or 'none'}"
        )
    return list(dict.fromkeys(metrics))


def _xs(run: Run, steps: list[int], x: str) -> list[float]:
    if x == "step":
        return [float(s) for s in steps]
    if x == "rollouts":  # rollouts consumed by the end of each step (rollout/trajectories summed)
        per_step = dict(
            zip(run.metrics.steps, run.metrics.series.get("rollout/trajectories", []), strict=False)
        )
        if not any(v is not None for v in per_step.values()):
            raise ValueError(f"--x rollouts needs rollout/trajectories in the metrics; {run.path} has none")
        total, at = 0.0, {}
        for s in run.metrics.steps:
            total += per_step.get(s) or 0.0
            at[s] = total
        return [at[s] for s in steps]
    # x == "time": wall-clock minutes at the end of each step, from the summed time/step
    table = run.metrics
    per_step = dict(zip(table.steps, table.series.get("time/step", []), strict=False))
    if not any(v is not None for v in per_step.values()):
        raise ValueError(f"--x time needs time/step in the metrics; {run.path} has none")
    elapsed, at = 0.0, {}
    for s in table.steps:
        elapsed += per_step.get(s) or 0.0
        at[s] = elapsed / 60.0
    return [at[s] for s in steps]


def _group_series(
    members: list[Run], name: str, x: str
) -> tuple[list[float], list[float], list[float] | None]:
    """x values every member logged `name` at, the members' mean there, and the 95% half-width (None for
    a single run)."""
    per_run = []
    for run in members:
        steps, values = run.metrics.points(name)
        per_run.append(dict(zip(_xs(run, steps, x), values, strict=True)) if steps else {})
    xs = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
    means, halves = [], []
    for at in xs:
        vals = [p[at] for p in per_run]
        mean = sum(vals) / len(vals)
        means.append(mean)
        if len(vals) > 1:
            sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
            halves.append(T975.get(len(vals), 1.96) * sd / math.sqrt(len(vals)))
    return xs, means, halves if len(members) > 1 else None


def plot_runs(
    run_dirs: Sequence[str | Path],
    metrics: Sequence[str] | None = None,
    out_png: str | Path | None = None,
    *,
    x: str = "step",
    labels: Sequence[str] | None = None,
    title: str | None = None,
    dpi: int = 150,
) -> Figure:
    """One subplot per metric, one line per run; saved to `out_png` when given. Returns the figure.

    `x`: "step", "time" (wall-clock minutes summed from time/step) or "rollouts" (rollouts consumed). Runs
    sharing a label are one line: their mean at the x values all of them logged, with a 95% interval band.
    A run that did not log a metric has no line in that subplot. ValueError for a directory without
    metrics.jsonl or an unknown metric.
    """
    if x not in X_AXES:
        raise ValueError(f"x={x!r}; accepted: {', '.join(X_AXES)}")
    runs = load_runs(run_dirs, labels)
    chosen = choose_metrics(runs, metrics)
    ncols = min(3, len(chosen))
    nrows = math.ceil(len(chosen) / ncols)
    fig = Figure(figsize=(max(4.4 * ncols, 6.0), 3.1 * nrows + 0.6), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    colors = dict(zip(groups, itertools.cycle(COLORS), strict=False))
    for ax, name in zip(axes, chosen, strict=False):
        for label, members in groups.items():
            xs, mean, half = _group_series(members, name, x)
            if not xs:
                continue
            sparse = len(xs) <= 12 or len(xs) < 0.5 * len(members[0].metrics.steps)
            ax.plot(xs, mean, label=label, color=colors[label], linewidth=1.6,
                    marker="o" if sparse else None, markersize=3)  # fmt: skip
            if half is not None:
                low = [m - h for m, h in zip(mean, half, strict=True)]
                high = [m + h for m, h in zip(mean, half, strict=True)]
                ax.fill_between(xs, low, high, color=colors[label], alpha=0.18, linewidth=0)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(
            {"step": "step", "time": "wall-clock minutes", "rollouts": "rollouts consumed"}[x], fontsize=9
        )
        ax.grid(True, color="#e5e8ec", linewidth=0.8)
        ax.tick_params(labelsize=8)
        if x == "step":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    for ax in axes[len(chosen) :]:
        ax.set_visible(False)
    handles = [
        Line2D([], [], color=colors[label], linewidth=2,
               label=label if len(members) == 1 else f"{label} (n={len(members)})")
        for label, members in groups.items()
    ]  # fmt: skip
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=min(len(groups), 2 * ncols),
        frameon=False,
        fontsize=9,
    )
    if title:
        fig.suptitle(title, fontsize=11)
    if out_png is not None:
        out = Path(out_png)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=dpi)
    return fig


def main(argv: list[str] | None = None) -> int:
    """Plot metrics of one or several runs into a PNG (one subplot per metric, one line per run)."""
    ap = argparse.ArgumentParser(prog="igpo plot", description=main.__doc__)
    ap.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (each holds metrics.jsonl)"
    )
    ap.add_argument("-o", "--out", required=True, help="the PNG file to write")
    ap.add_argument(
        "--metric",
        dest="metrics",
        action="append",
        default=None,
        metavar="NAME",
        help=f"a metric to plot (repeat for several; default: those of {', '.join(DEFAULT_METRICS)} logged)",
    )
    ap.add_argument(
        "--x",
        default="step",
        choices=X_AXES,
        help="x axis: step, wall-clock minutes (time), rollouts consumed",
    )
    ap.add_argument(
        "--label",
        dest="labels",
        action="append",
        default=None,
        metavar="NAME",
        help="a legend label per run, in order; runs sharing one are drawn as their mean with a 95%% interval",
    )
    ap.add_argument("--title", default=None, help="a title over the figure")
    args = ap.parse_args(argv)
    if not args.out.lower().endswith(".png"):
        print(f"igpo plot: -o {args.out}: expected a .png file name", file=sys.stderr)
        return 2
    try:
        fig = plot_runs(args.run_dirs, args.metrics, args.out, x=args.x, labels=args.labels, title=args.title)
    except ValueError as err:
        print(f"igpo plot: {err}", file=sys.stderr)
        return 2
    shown = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    print(
        f"igpo plot: wrote {args.out} ({len(args.run_dirs)} run(s) x {len(shown)} metrics: {', '.join(shown)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

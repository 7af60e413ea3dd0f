"""`igpo plot` / `plot_runs`: one subplot per metric, one line per run (values as logged), the PNG written,
unknown metrics named with the available ones."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest

from igpo_rlhf.viewer.plot import main as plot_main
from igpo_rlhf.viewer.plot import plot_runs


def write_run(path: Path, steps: list[dict]) -> Path:
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps), encoding="utf-8")
    return path


@pytest.fixture()
def runs(tmp_path) -> tuple[Path, Path]:
    igpo = write_run(tmp_path / "igpo", [
        {"step": s, "reward/f1": 0.1 * s, "ig/mean": 0.01 * s, "policy/kl": 1e-4 * s, "policy/entropy": 1.0 - 0.1 * s,
         "rollout/searches": 1.0 + s, "time/step": 30.0, **({"eval/f1": 0.05 * s} if s % 2 == 0 else {})}
        for s in range(1, 7)
    ])  # fmt: skip
    grpo = write_run(tmp_path / "grpo", [
        {"step": s, "reward/f1": 0.08 * s, "policy/kl": 2e-4 * s, "policy/entropy": 0.9, "rollout/searches": 1.5,
         "time/step": 20.0}
        for s in range(1, 5)
    ])  # fmt: skip
    return igpo, grpo


def test_default_metrics_one_line_per_run_and_the_png(runs, tmp_path):
    igpo, grpo = runs
    out = tmp_path / "figs" / "curves.png"
    fig = plot_runs([igpo, grpo], None, out)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == [
        "reward/f1", "eval/f1", "ig/mean", "policy/kl", "policy/entropy", "rollout/searches",
    ]  # fmt: skip
    lines = {ax.get_title(): {line.get_label(): line for line in ax.get_lines()} for ax in axes}
    assert {k: sorted(v) for k, v in lines.items()} == {
        "reward/f1": ["grpo", "igpo"],
        "eval/f1": ["igpo"],
        "ig/mean": ["igpo"],
        "policy/kl": ["grpo", "igpo"],
        "policy/entropy": ["grpo", "igpo"],
        "rollout/searches": ["grpo", "igpo"],
    }  # fmt: skip  (grpo logged neither eval/f1 nor ig/mean)
    assert list(lines["eval/f1"]["igpo"].get_xdata()) == [2, 4, 6]
    assert list(lines["eval/f1"]["igpo"].get_ydata()) == pytest.approx([0.1, 0.2, 0.3])
    assert list(lines["reward/f1"]["grpo"].get_ydata()) == pytest.approx([0.08, 0.16, 0.24, 0.32])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["igpo", "grpo"]
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 400 and image.shape[1] > 1000  # 3 x 2 subplots at 150 dpi


def test_chosen_metrics_time_axis_and_errors(runs, tmp_path):
    igpo, grpo = runs
    fig = plot_runs([igpo, grpo], ["policy/kl"], x="time")
    (ax,) = [ax for ax in fig.axes if ax.get_visible()]
    by_run = {line.get_label(): line for line in ax.get_lines()}
    assert list(by_run["igpo"].get_xdata()) == pytest.approx([0.5 * s for s in range(1, 7)])  # 30 s a step
    assert list(by_run["grpo"].get_xdata()) == pytest.approx([s / 3 for s in range(1, 5)])  # 20 s a step
    with pytest.raises(
        ValueError, match=r"unknown metric 'reward/f2': no run logged it; available: eval/f1, ig/mean"
    ):
        plot_runs([igpo, grpo], ["reward/f2"])
    with pytest.raises(ValueError, match="no metrics.jsonl; expected a run directory"):
        plot_runs([igpo, tmp_path])
    with pytest.raises(ValueError, match="x='wall'; accepted: step, time"):
        plot_runs([igpo], x="wall")
    same_name = write_run(tmp_path / "other" / "igpo", [{"step": 1, "reward/f1": 0.5}])
    fig = plot_runs([igpo, same_name], ["reward/f1"])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [f"{tmp_path.name}/igpo", "other/igpo"]


def test_cli(runs, tmp_path, capsys):
    igpo, grpo = runs
    out = tmp_path / "kl.png"
    assert (
        plot_main([str(igpo), str(grpo), "-o", str(out), "--metric", "policy/kl", "--metric", "reward/f1"])
        == 0
    )
    assert out.is_file() and f"wrote {out}" in capsys.readouterr().out
    assert plot_main([str(igpo), "-o", str(out), "--metric", "nope"]) == 2
    assert "unknown metric 'nope'" in capsys.readouterr().err
    assert plot_main([str(igpo), "-o", str(tmp_path / "x.svg")]) == 2
    assert "expected a .png" in capsys.readouterr().err


@pytest.mark.slow
def test_plot_of_the_real_run(trained_run, tmp_path, capsys):
    out = tmp_path / "run.png"
    assert plot_main([str(trained_run), "-o", str(out)]) == 0
    assert "reward/f1, ig/mean, policy/kl, policy/entropy, rollout/searches" in capsys.readouterr().out
    assert matplotlib.image.imread(out).shape[2] in (3, 4)


def test_runs_sharing_a_label_are_their_mean_with_a_95_percent_band_against_rollouts(tmp_path):
    """Two seeds of one setting: the mean line, a band of t_{0.975,1} x sd / sqrt(2) around it (worked out by
    hand below), x in rollouts consumed (16 rollouts per step, step 0 is validation only)."""

    def seed(name: str, f1: list[float]) -> Path:
        return write_run(tmp_path / name, [{"step": 0, "eval/f1": f1[0]}] + [
            {"step": s, "rollout/trajectories": 16.0, "reward/f1": 0.5, **({"eval/f1": f1[s // 2]} if s % 2 == 0 else {})}
            for s in (1, 2, 3, 4)
        ])  # fmt: skip

    runs = [seed("a0", [0.2, 0.4, 0.5]), seed("a1", [0.4, 0.6, 0.7]), seed("b0", [0.1, 0.1, 0.1])]
    fig = plot_runs(runs, ["eval/f1"], tmp_path / "f1.png", labels=["a", "a", "b"], x="rollouts")
    [ax] = [ax for ax in fig.axes if ax.get_visible()]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["a"].get_xdata()) == [0.0, 32.0, 64.0]
    assert list(lines["a"].get_ydata()) == pytest.approx([0.3, 0.5, 0.6])
    # sd of (0.2, 0.4) is 0.1414 (n - 1 = 1), sd / sqrt(2) = 0.1, t_{0.975,1} = 12.706
    [band] = ax.collections
    ys = sorted({round(float(y), 4) for y in band.get_paths()[0].vertices[:, 1]})
    assert ys == pytest.approx(sorted({round(m + k * 1.2706, 4) for m in (0.3, 0.5, 0.6) for k in (-1, 1)}))
    assert list(lines["b"].get_ydata()) == pytest.approx([0.1, 0.1, 0.1])  # one run: no band
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a (n=2)", "b"]

"""bench/gpu_check.sh on CPU: the shell script parses, and its Python half's `--device cpu` dry run passes every
part that can run without a GPU (the scorer against naive passes, ZeRO-2 and ZeRO-3 updates through the real
PolicyActor against plain torch, one IGPO training step) on the tiny world model, and skips vLLM. The CUDA run
itself needs a GPU box (bench/RESULTS.md says whether it has been run)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.tiny_world import world_overrides

pytestmark = pytest.mark.slow


def test_the_script_parses_and_refuses_bad_arguments(tmp_path):
    assert subprocess.run(["bash", "-n", str(ROOT / "bench/gpu_check.sh")]).returncode == 0
    run = subprocess.run([sys.executable, str(ROOT / "bench/gpu_check.py"), "--model", str(tmp_path), "--device", "cpu"],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert run.returncode == 2 and "not a model directory (no config.json)" in run.stderr
    run = subprocess.run([sys.executable, str(ROOT / "bench/gpu_check.py"), "--model", str(tmp_path), "--parts", "nope"],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert run.returncode == 2 and "--parts: unknown ['nope']" in run.stderr


def test_cpu_dry_run_passes_every_part_but_vllm(tiny, tmp_path):
    world_dir, model_dir = tiny
    work = tmp_path / "work"
    sets = [*world_overrides(world_dir), f"search.proxy.corpus={world_dir / 'corpus.jsonl'}"]
    command = ["bash", str(ROOT / "bench/gpu_check.sh"), "--model", str(model_dir), "--device", "cpu",
               "--work", str(work), *[a for s in sets for a in ("--set", s)]]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900,
                         env={**os.environ, "PYTHON": sys.executable})  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table = (work / "results.md").read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in table.splitlines()[4:]}
    assert rows == {"scorer": "ok", "zero-2": "ok", "zero-3": "ok", "step-hf": "ok", "step-vllm": "skipped"}
    assert "max Δ weight" in table and "reward/f1" in table and "x naive" in table
    assert (work / "step_hf" / "metrics.jsonl").is_file()
    assert table in run.stdout  # the same table on the console

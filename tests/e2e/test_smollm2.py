"""One IGPO step with the real pretrained model through every actor, as a user runs it: `igpo train -c
configs/smollm2_wiki.yaml --set train.steps=1` in a subprocess (SmolLM2-135M-Instruct, its chat template,
HotpotQA questions, the BM25 proxy over the shipped Wikipedia corpus, local Ray, DeepSpeed ZeRO-2 on CPU); and
`igpo eval` of the same model on the shipped HotpotQA questions.

What the run left is checked against computations written out here: each prompt is the chat template's
rendering of the configured user message; every belief is a plain forward pass of the initial model (θ_old at
step 1) over the context, the probe and the gold alias; the turn rewards are b_t - b_{t-1} and the outcome
(F1, or -2 without an answer).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from igpo_rlhf.cli import main as igpo
from igpo_rlhf.config import load_config
from igpo_rlhf.data.datasets import read_file
from igpo_rlhf.models.loading import load_causal_lm, load_tokenizer
from igpo_rlhf.scoring.probe import alias_token_ids
from tests.e2e.test_train import squad_f1, written_answer
from tests.models.smollm2 import HOTPOTQA, ROOT, smollm2_dir
from tests.scoring.naive import naive_belief

pytestmark = [pytest.mark.slow, pytest.mark.real_model]
CONFIG = ROOT / "configs" / "smollm2_wiki.yaml"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smollm2-run")
    args = ["train", "-c", str(CONFIG), "--set", "train.steps=1", "--set", f"model.path={smollm2_dir()}",
            "--set", f"logging.run_dir={run_dir}", "--set", "logging.progress_bar=false",
            "--set", f"search.proxy.cache.dir={run_dir / 'search-cache'}"]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "igpo_rlhf.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=840)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return run_dir, done


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_one_igpo_step_runs_through_every_actor(run):
    run_dir, _ = run
    [metrics] = read_jsonl(run_dir / "metrics.jsonl")
    assert metrics["step"] == 1 and metrics["rollout/trajectories"] == 4  # 2 prompts x 2 rollouts
    assert math.isfinite(metrics["policy/loss"]) and math.isfinite(metrics["policy/grad_norm"])
    assert (run_dir / "checkpoints" / "step_00001").is_dir()


@torch.no_grad()
def test_prompts_beliefs_and_rewards_of_the_real_model(run):
    run_dir, _ = run
    cfg = load_config(CONFIG)
    rows = read_jsonl(run_dir / "rollouts" / "step_00001.jsonl")
    assert len(rows) == 4
    tok = load_tokenizer(smollm2_dir())
    model = load_causal_lm(smollm2_dir())  # θ_old of step 1: the initial weights
    probe = tok.encode("<answer>", add_special_tokens=False)
    for row in rows:
        ids = row["token_ids"]
        user = cfg.rollout.prompt_template.replace("{question}", row["question"])
        chat = tok.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        assert ids[: row["prompt_len"]] == tok.encode(chat, add_special_tokens=False)
        assert chat.startswith("<|im_start|>system\n") and chat.endswith("<|im_start|>assistant\n")
        # beliefs: one plain forward per belief point and gold alias (written as `<answer> alias`), best alias
        aliases = alias_token_ids(tok, "<answer>", row["golds"])
        assert aliases == [
            tok.encode("<answer> " + g, add_special_tokens=False)[len(probe) :] for g in row["golds"]
        ]
        want = [max(naive_belief(model, ids, p, probe, a) for a in aliases) for p in row["belief_points"]]
        assert row["beliefs"] == pytest.approx(want, abs=1e-4)
        # turn rewards: b_t - b_{t-1} between belief points, then the outcome
        b = [math.exp(x) for x in row["beliefs"]]
        answer = written_answer(row)
        outcome = -2.0 if answer is None else squad_f1(answer, row["golds"])
        assert row["turn_rewards"] == pytest.approx(
            [b[t] - b[t - 1] for t in range(1, len(b))] + [outcome], abs=1e-5
        )


@torch.no_grad()
def test_igpo_eval_on_the_shipped_data(tmp_path):
    out = tmp_path / "eval"
    argv = ["eval", "-c", str(CONFIG), "--set", f"model.path={smollm2_dir()}", "--data", str(HOTPOTQA),
            "--limit-per-source", "1", "--beliefs", "--out", str(out)]  # fmt: skip
    assert igpo(argv) == 0
    rows = read_jsonl(out / "rollouts.jsonl")
    questions = read_file(HOTPOTQA)[:1]
    assert [r["question"] for r in rows] == [q.question for q in questions]
    tok = load_tokenizer(smollm2_dir())
    model = load_causal_lm(smollm2_dir())
    cfg = load_config(CONFIG)
    probe = tok.encode("<answer>", add_special_tokens=False)
    for row in rows:
        user = cfg.rollout.prompt_template.replace("{question}", row["question"])
        chat = tok.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        assert row["token_ids"][: row["prompt_len"]] == tok.encode(chat, add_special_tokens=False)
        answer = written_answer(row)
        assert row["f1"] == pytest.approx(0.0 if answer is None else squad_f1(answer, row["golds"]))
        assert row["format_fail"] == float(answer is None)
        aliases = alias_token_ids(tok, "<answer>", row["golds"])
        want = [
            max(naive_belief(model, row["token_ids"], p, probe, a) for a in aliases)
            for p in row["belief_points"]
        ]
        assert row["beliefs"] == pytest.approx(want, abs=1e-4)
    scores = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    hotpot = scores["sources"]["r1searcher_hotpotqa_500"]
    assert hotpot["n"] == 1 and hotpot["f1"] == pytest.approx(rows[0]["f1"])
    assert hotpot["format_fail"] == pytest.approx(rows[0]["format_fail"])
    assert scores["setting"]["model"]["path"] == str(smollm2_dir())

"""Validation during training, the best checkpoint, `igpo export`, and the collapse guard, through the real
trainer (Ray actors, DeepSpeed, scorer, the search proxy) with the tiny world model.

Held-out scores are recounted here from the validation rollouts with an F1 written in the test; the best
checkpoint and the export are loaded with plain `from_pretrained` and compared with the policy's own weights;
the collapse is a real one (a learning rate of 0.1 blows the policy's KL up) after healthy steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from igpo_rlhf.cli import main as igpo
from igpo_rlhf.ray.train import main as train_main
from igpo_rlhf.ray.train import prepare
from igpo_rlhf.ray.trainer import Trainer
from tests.e2e.conftest import e2e_config
from tests.e2e.test_train import read_jsonl, squad_f1, written_answer

pytestmark = pytest.mark.slow

VALIDATE = ["data.eval=[world:test]", "eval.every_n_steps=1", "eval.subset_size=4"]


def sequence_log_probs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


@pytest.fixture(scope="module")
def validated(tiny, proxy, local_ray, tmp_path_factory):
    """Two IGPO steps validated at steps 0, 1 and 2 on 4 held-out world questions (greedy)."""
    cfg = e2e_config(tiny, tmp_path_factory.mktemp("validated"), *VALIDATE)
    inputs = prepare(cfg)
    trainer = Trainer(cfg, inputs.prompts, proxy.url, eval_prompts=inputs.eval_prompts)
    try:
        history = trainer.run()
        final = ray.get(trainer.policy.call_async("state_dict_for_sync")[0])
    finally:
        trainer.close()
    return cfg, inputs, history, final


def test_validation_is_logged_at_step_0_every_n_steps_and_recounts_from_its_rollouts(validated):
    cfg, inputs, _, _ = validated
    run_dir = Path(cfg.logging.run_dir)
    assert len(inputs.eval_prompts) == 4 and all(
        q.meta["eval_source"] == "world:test" for q in inputs.eval_prompts
    )
    lines = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in lines] == [0, 1, 2]
    for m in lines:
        rows = read_jsonl(run_dir / "eval_rollouts" / f"step_{m['step']:05d}.jsonl")
        assert sorted(r["question"] for r in rows) == sorted(q.question for q in inputs.eval_prompts)
        f1 = [0.0 if written_answer(r) is None else squad_f1(written_answer(r), r["golds"]) for r in rows]
        # one source: its F1 and the unweighted average over sources are the same mean
        assert m["eval/world:test/f1"] == pytest.approx(sum(f1) / len(f1), abs=1e-9)
        assert m["eval/f1"] == pytest.approx(sum(f1) / len(f1), abs=1e-9)
        assert m["eval/format_fail"] == pytest.approx(sum(written_answer(r) is None for r in rows) / 4)
    assert "reward/f1" not in lines[0]  # step 0 is validation only
    best = max(range(3), key=lambda k: (lines[k]["eval/f1"], -k))  # the first step reaching the maximum
    assert [m["eval/best_f1"] for m in lines] == [max(m["eval/f1"] for m in lines[: k + 1]) for k in range(3)]
    assert json.loads((run_dir / "checkpoints" / "best" / "best.json").read_text())["step"] == best


def test_greedy_validation_rollouts_equal_a_plain_greedy_run_of_the_checkpoint(validated, tiny, proxy):
    """The best checkpoint is the policy at its step: greedy rollouts of it in-process give the tokens
    validation logged at that step."""
    from igpo_rlhf.models.loading import load_causal_lm, load_tokenizer
    from igpo_rlhf.rollout.agent_loop import rollouts_for_config
    from igpo_rlhf.rollout.engine import HFEngine
    from igpo_rlhf.rollout.protocols import make_protocol
    from igpo_rlhf.rollout.searcher import ProxySearcher

    cfg, inputs, _, _ = validated
    run_dir = Path(cfg.logging.run_dir)
    best_dir = run_dir / "checkpoints" / "best"
    step = json.loads((best_dir / "best.json").read_text())["step"]
    tokenizer = load_tokenizer(best_dir)
    greedy = cfg.rollout.model_copy(update={"n_samples": 1, "temperature": 0.0})
    trajectories = rollouts_for_config(
        HFEngine(load_causal_lm(best_dir), tokenizer),
        tokenizer,
        make_protocol(cfg.rollout, tokenizer, cfg.algorithm.answer_probe),
        ProxySearcher(proxy.url, timeout_s=30, retries=2),
        inputs.eval_prompts,
        greedy,
        seed=None,
        weights_version=0,
    )
    logged = {
        r["question"]: r["token_ids"]
        for r in read_jsonl(run_dir / "eval_rollouts" / f"step_{step:05d}.jsonl")
    }
    assert {t.question: t.token_ids for t in trajectories} == logged


def test_export_of_the_last_checkpoint_equals_the_policy(validated, tmp_path):
    cfg, _, _, final = validated
    out = tmp_path / "exported"
    assert igpo(["export", str(Path(cfg.logging.run_dir) / "checkpoints" / "step_00002"), str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, final[name], atol=0, rtol=0)
    policy = AutoModelForCausalLM.from_pretrained(cfg.model.path).eval()
    policy.load_state_dict(final)
    ids = list(range(5, 60))
    torch.testing.assert_close(
        sequence_log_probs(model, ids), sequence_log_probs(policy, ids), atol=1e-6, rtol=0
    )
    assert igpo(["export", str(tmp_path / "nope"), str(tmp_path / "o")]) == 2


# -------------------------------------------------------------------------------------------- collapse
def collapse_args(tiny, run_dir: Path, *extra: str) -> list[str]:
    """CLI args of the collapse runs: the e2e run, a checkpoint every step, the KL watched at 0.5."""
    cfg = e2e_config(tiny, run_dir, "train.collapse.kl_max=0.5", "train.collapse.window=1", *extra)
    config = run_dir / "config.input.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(cfg.model_dump(mode="json")), encoding="utf-8")  # JSON is YAML
    return ["-c", str(config)]


@pytest.fixture(scope="module")
def healthy_run(tiny, proxy, tmp_path_factory) -> Path:
    """Two healthy steps at lr 1e-4, a checkpoint each: the start both collapse tests resume a copy of."""
    run_dir = tmp_path_factory.mktemp("collapse") / "healthy"
    args = collapse_args(tiny, run_dir, f"search.url={proxy.url}", "train.collapse.max_rollbacks=2")
    assert train_main([*args, "--set", "train.steps=2"]) == 0
    return run_dir


@pytest.mark.parametrize("action", ["stop", "rollback"])
def test_a_collapsing_run_stops_or_rolls_back_to_the_last_good_checkpoint(
    tiny, proxy, healthy_run, tmp_path, capsys, action
):
    run_dir = tmp_path / action
    shutil.copytree(healthy_run, run_dir)
    args = collapse_args(tiny, run_dir, f"search.url={proxy.url}", f"train.on_collapse={action}",
                         "train.collapse.max_rollbacks=2")  # fmt: skip
    # the two healthy steps resumed at lr 0.1: the first update at that rate wrecks the policy
    code = train_main([*args, "--resume", "--set", "train.steps=6", "--set", "train.lr=0.1"])
    err = capsys.readouterr().err
    assert code == 3
    lines = read_jsonl(run_dir / "metrics.jsonl")
    kl = {m["step"]: m["policy/kl"] for m in lines}
    # step 3 trains θ2 (healthy: it confirms checkpoint 2) at lr 0.1; step 4 sees θ3 and its KL explodes
    assert kl[3] < 0.5
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step_"))
    if action == "stop":
        assert [m["step"] for m in lines] == [1, 2, 3, 4] and kl[4] > 0.5
        assert "training collapsed at step 4: policy/kl" in err and "Stopped (train.on_collapse=stop)" in err
        assert "the last good checkpoint is" in err and "step_00002" in err
        assert checkpoints == ["step_00002", "step_00003"]  # none of the collapsed step
        return
    # rollback: back to checkpoint 2 with the learning rate halved, twice, then stopped at the limit
    events = read_jsonl(run_dir / "events.jsonl")
    assert [(e["step"], e["to_step"], e["lr_scale"]) for e in events] == [(4, 2, 0.5), (4, 2, 0.25)]
    assert "train.collapse.max_rollbacks=2 rollbacks done" in err
    # metrics.jsonl holds the last replay only: steps 1-4 once, step 3 at lr 0.1 x 0.25
    assert [m["step"] for m in lines] == [1, 2, 3, 4]
    assert lines[2]["policy/lr"] == pytest.approx(0.1 * 0.25)
    assert checkpoints == ["step_00002", "step_00003"]  # the good one, and the last replay's step 3

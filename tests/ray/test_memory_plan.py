"""`igpo plan` (igpo_rlhf/ray/memory_plan.py): its estimate against what a small model really takes on CPU.

- Parameters: the count from config.json equals transformers' `numel` sum for Qwen2 (tied and untied),
  Llama (with attention and MLP biases) and Qwen3 (q/k norms).
- Model states: a real DeepSpeed step on CPU (one rank, gloo, in a subprocess) for ZeRO-0 float32, ZeRO-2
  float32 and ZeRO-2 bfloat16; the bytes of every live tensor (storage sizes, found by the garbage
  collector) while the second backward has just run (weights, fp32 partitions, Adam moments, gradients),
  within 3% of weights + optimizer + gradients. DeepSpeed's reduce bucket is not counted: it lives only
  inside the backward.
- Activations: the peak of live bytes (torch.profiler allocation records) during a real forward + backward
  of a Qwen2 with a known token count, through the policy's chunked log-prob pass, within 20% of
  activations + logits chunks + parameter gradients, with and without gradient checkpointing.
- The command: a table, exit 0 when it fits, exit 2 naming the knobs when it does not; `igpo train` runs
  the same check at start-up when roles ask for GPUs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen2ForCausalLM, Qwen3Config

from igpo_rlhf.config import ConfigError, load_config
from igpo_rlhf.ray.memory_plan import (
    ModelShape,
    activation_bytes,
    check_fits,
    logits_bytes,
    main,
    model_state_bytes,
    plan_memory,
)
from igpo_rlhf.training.logprobs import action_log_probs
from tests.conftest import ROOT
from tests.training.test_action_log_probs import peak_bytes

SMALL = {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 3,
         "num_attention_heads": 4, "num_key_value_heads": 2}  # fmt: skip


@pytest.mark.parametrize(
    "config",
    [
        Qwen2Config(**SMALL, tie_word_embeddings=False),
        Qwen2Config(**SMALL, tie_word_embeddings=True),
        LlamaConfig(**SMALL, attention_bias=True, mlp_bias=True, tie_word_embeddings=False),
        Qwen3Config(**SMALL, head_dim=32, tie_word_embeddings=True),
    ],
    ids=["qwen2", "qwen2-tied", "llama-biases", "qwen3"],
)
def test_parameter_count_from_config_json(config, tmp_path):
    model = AutoModelForCausalLM.from_config(config)
    model.config.save_pretrained(tmp_path)
    assert ModelShape.from_dir(tmp_path).parameters() == sum(p.numel() for p in model.parameters())


CASES = [(0, "float32"), (2, "float32"), (2, "bfloat16")]
MEASURE = r"""
import gc, json, os, sys, torch
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
import deepspeed
from transformers import Qwen2Config, Qwen2ForCausalLM
from igpo_rlhf.ray.deepspeed_actor import deepspeed_config

def live_bytes():
    seen, total = set(), 0
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
            storage = obj.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total

deepspeed.init_distributed(dist_backend="gloo")
results = []
for stage, dtype in json.loads(sys.argv[2]):  # one case per process: DeepSpeed keeps engines alive
    gc.collect()
    before = live_bytes()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=2000, hidden_size=128, intermediate_size=320, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    n = sum(p.numel() for p in model.parameters())
    ds = deepspeed_config(zero_stage=stage, micro_batch_size=1, grad_accum=1, grad_clip=1.0, dtype=dtype,
                          offload=False)
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4),
                                      config=ds)
    ids = torch.randint(0, 2000, (1, 8))
    for step in range(2):
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        del loss
        if step == 1:
            gc.collect()
            measured = live_bytes() - before
        engine.step()
    results.append({"measured": measured, "parameters": n})
    del engine, model, ds
    gc.collect()
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def deepspeed_states():
    """Live bytes after the second backward of each CASE, each in a subprocess of its own (started together)."""
    import os

    from igpo_rlhf.ray.group import free_port

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", MEASURE, str(free_port()), json.dumps([case])],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for case in CASES
    ]  # fmt: skip
    results = {}
    for case, proc in zip(CASES, procs, strict=True):
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        [results[case]] = json.loads(out.strip().splitlines()[-1])
    return results


@pytest.mark.parametrize("stage, dtype", CASES)
def test_deepspeed_model_states_match_the_estimate(deepspeed_states, stage, dtype):
    result = deepspeed_states[(stage, dtype)]
    parts = model_state_bytes(result["parameters"], dtype, stage, world_size=1, offload=False)
    expected = parts["weights"] + parts["optimizer"] + parts["gradients"]
    # by hand for one rank: fp32 ZeRO-0 4 + 8 + 4 = 16 bytes per parameter; fp32 ZeRO-2 4 + (4 + 8) + 4 = 20;
    # bf16 ZeRO-2 2 + (4 + 8) + 2 = 16
    by_hand = {(0, "float32"): 16, (2, "float32"): 20, (2, "bfloat16"): 16}[(stage, dtype)]
    assert expected == by_hand * result["parameters"]
    assert result["measured"] == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("rows, width", [(1, 512), (2, 256)])
def test_forward_backward_peak_matches_the_estimate(checkpointing, rows, width):
    config = Qwen2Config(
        **{**SMALL, "intermediate_size": 176}, tie_word_embeddings=False, attn_implementation="sdpa"
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(0, SMALL["vocab_size"], (rows, width))
    chunk = 64

    def step():
        out = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1, use_cache=False)
        lp = action_log_probs(model.lm_head, out.hidden_states[-1], ids, torch.ones_like(ids, dtype=torch.bool),
                              logits_chunk=chunk)  # fmt: skip
        lp.log_probs.sum().backward()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        step()  # first call: lazily built buffers (rotary tables) are not part of the peak
        model.zero_grad(set_to_none=True)
        measured = peak_bytes(step)
    finally:
        torch.set_num_threads(threads)
    shape = ModelShape.from_config(config.to_dict())
    gradients = 4 * shape.parameters()
    expected = activation_bytes(shape, rows * width, "float32", checkpointing) + logits_bytes(
        chunk, shape.vocab
    )
    assert measured == pytest.approx(expected + gradients, rel=0.2)


def qwen7b(tmp_path):
    """A directory holding only Qwen2.5-7B's config.json (the published hyper-parameters)."""
    config = {"model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "num_hidden_layers": 28,
              "intermediate_size": 18944, "num_attention_heads": 28, "num_key_value_heads": 4,
              "tie_word_embeddings": False}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_the_plan_of_the_7b_config(tmp_path, capsys):
    model = qwen7b(tmp_path)
    shape = ModelShape.from_dir(model)
    assert shape.parameters() == pytest.approx(7.62e9, rel=1e-3)  # Qwen2.5-7B: 7.61B parameters
    args = ["-c", str(ROOT / "configs/qwen2.5-7b-igpo.yaml"), "--set", f"model.path={model}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "7.62B parameters" in out and "colocated bundle" in out and "policy + reference + scorer" in out
    plan = plan_memory(load_config(args[1], args[3:]))
    policy = plan.roles["policy"].parts
    # ZeRO-3 + offload over 4 ranks: bf16 gradients 2·P/4 on the GPU, optimizer states on the CPU
    assert policy["gradients"] == pytest.approx(2 * shape.parameters() / 4) and policy["optimizer"] == 0
    assert (
        plan.roles["scorer"].parts["kv_cache"] == 32768 * 2 * 28 * 512 * 2
    )  # tokens x K,V x layers x KV x bf16
    assert plan.groups[0].bytes == pytest.approx(
        sum(plan.roles[r].total for r in ("policy", "reference", "scorer"))
    )


def test_a_layout_that_cannot_fit_is_refused_naming_the_knobs(tmp_path, capsys):
    model = qwen7b(tmp_path)
    args = ["-c", str(ROOT / "configs/qwen2.5-7b-igpo.yaml"), "--set", f"model.path={model}"]
    assert main([*args, "--set", "train.offload=false"]) == 2
    err = capsys.readouterr().err
    assert "a colocated bundle needs about" in err and "but has 80 GB" in err
    assert "policy: train.offload=true" in err and "scorer: a smaller scorer.token_budget" in err
    assert "train.zero_stage=3" not in err  # already set: not suggested
    # 10 GB GPUs: 0.85 x 10 GB no longer holds 7B's weights over 2 GPUs (7.6 GB each) and vLLM's activations
    assert main([*args, "--gpu-memory-gb", "10"]) == 2
    assert (
        "raise rollout.vllm.gpu_memory_utilization or rollout.vllm.tensor_parallel_size"
        in capsys.readouterr().err
    )
    with pytest.raises(ConfigError, match="does not fit the GPUs"):
        check_fits(load_config(args[1], [args[3]]), 40)
    assert (
        main(["-c", str(ROOT / "configs/qwen2.5-7b-igpo.yaml"), "--set", f"model.path={tmp_path / 'none'}"])
        == 2
    )
    assert "has no config.json" in capsys.readouterr().err


def test_train_checks_memory_at_start_up_when_roles_use_gpus(tmp_path, capsys):
    from igpo_rlhf.ray.train import main as train_main

    (tmp_path / "model").mkdir()
    model = qwen7b(tmp_path / "model")
    code = train_main(["-c", str(ROOT / "configs/demo.yaml"), "--set", f"model.path={model}",
                       "--set", f"logging.run_dir={tmp_path / 'run'}", "--set", "resources.policy.num_gpus=1",
                       "--set", "resources.gpu_memory_gb=16"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "does not fit the GPUs" in err and "policy GPU" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing started


def test_one_gpu_holding_every_role_adds_them_up(tmp_path, capsys):
    """bench/gpu_check.sh's layout: a colocated bundle of one rank (0.7 GPU) and an hf rollout actor (0.3) may
    share one GPU (placement.py keeps fractions for single ranks), so the plan counts them together."""
    model = qwen7b(tmp_path)
    layout = ["resources.colocate=true", "resources.policy.num_gpus=0.3", "resources.reference.num_gpus=0.2",
              "resources.scorer.num_gpus=0.2", "resources.rollout.num_gpus=0.3", f"model.path={model}",
              "model.dtype=bfloat16"]  # fmt: skip
    cfg = load_config(ROOT / "configs/demo.yaml", layout)
    plan = plan_memory(cfg, 141)
    [group] = plan.groups
    assert group.label == "shared GPU" and group.fraction == pytest.approx(1.0)
    assert group.bytes == pytest.approx(sum(r.total for r in plan.roles.values()))
    assert {m for m, _ in group.members} == {"policy", "reference", "scorer", "rollout (hf)"}
    assert main(["-c", str(ROOT / "configs/demo.yaml"), *[a for kv in layout for a in ("--set", kv)],
                 "--gpu-memory-gb", "20"]) == 2  # fmt: skip
    assert "rollout (hf): a smaller rollout.batch_size" in capsys.readouterr().err

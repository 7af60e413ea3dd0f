"""Does igpo-rlhf work on this GPU box, and how fast? The Python half of bench/gpu_check.sh (its header says how
to prepare an offline box). One table, printed and written to --out.

    python bench/gpu_check.py --model models/smollm2-135m [--device cuda] [--out runs/gpu_check/results.md]
    python bench/gpu_check.py --model DIR --device cpu --parts scorer,deepspeed,step     # the CPU dry run

Parts, each one row (a failing part is FAIL with its error; the others still run):
  scorer     the belief scorer (bench/scorer.py's batches: 5 belief points, one 8-token alias) against naive
             per-point passes on the real model: max |Δ log b| and the speed-up; bfloat16 on CUDA, float32 on CPU
  zero-2     one policy update through the real PolicyActor (a local Ray, DeepSpeed ZeRO-2, float32) against the
  zero-3     same update in plain torch on the same device: max |Δ weight| (relative to the learning rate)
  step-hf    one IGPO training step (`igpo train`, configs/demo.yaml on the built-in world) with the hf engine;
             on CUDA every role on the one GPU (colocated policy/reference/scorer + the rollout actor)
  step-vllm  the same step with rollout.engine=vllm (one engine, a fraction of the GPU); skipped without vllm
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTS = ("scorer", "zero-2", "zero-3", "step-hf", "step-vllm")
LR = 1e-5
# every role on one GPU: a colocated bundle of one rank (0.7) + the rollout actor / vLLM engine (0.3)
ONE_GPU = [
    "resources.num_gpus=1",
    "resources.colocate=true",
    "resources.policy.num_gpus=0.3",
    "resources.reference.num_gpus=0.2",
    "resources.scorer.num_gpus=0.2",
    "resources.rollout.num_gpus=0.3",
    "model.dtype=bfloat16",
]


@dataclass
class Row:
    part: str
    status: str  # ok | FAIL | skipped
    seconds: float
    result: str


# ------------------------------------------------------------------------------------------------ scorer
def check_scorer(args: argparse.Namespace) -> str:
    from transformers import AutoModelForCausalLM

    from igpo_rlhf.scoring import score_beliefs

    spec = importlib.util.spec_from_file_location("bench_scorer", ROOT / "bench" / "scorer.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cuda = args.device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, attn_implementation="sdpa")
    model = model.to(args.device).eval()
    settings = SimpleNamespace(vocab=model.config.vocab_size, batch=4, probe_len=3, answer_len=8,
                               token_budget=16384, repeats=3, clock="wall")  # fmt: skip
    tolerance = 0.05 if cuda else 1e-4  # bfloat16: rounding of two different kernels; float32: exact
    out = []
    for length in (1024, 2048) if cuda else (128,):
        batch = bench.make_batch(settings, length, 5)
        ours = score_beliefs(model, **batch, token_budget=settings.token_budget)
        naive = bench.naive(model, batch)
        diff = max(abs(a - b) for x, y in zip(ours, naive, strict=True) for a, b in zip(x, y, strict=True))
        seconds = bench.time_side_by_side(["naive", "ours_beliefs"], model, batch, settings)
        out.append(
            f"L={length}: max Δ log b {diff:.1e}, {seconds['naive'] / seconds['ours_beliefs']:.1f}x naive"
        )
        if not diff <= tolerance:
            raise AssertionError(
                f"{'; '.join(out)}: beliefs differ from the naive passes by more than {tolerance}"
            )
    return f"{dtype}: " + "; ".join(out)


# --------------------------------------------------------------------------------------------- deepspeed
def _experiences(model_dir: str, device: str) -> list:
    """6 rollouts of 24..64 tokens; old log-probs = the model's own, reference shifted, random advantages."""
    from transformers import AutoModelForCausalLM

    from igpo_rlhf.training.batch import Experience

    g = torch.Generator().manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    vocab = model.config.vocab_size
    out = []
    for n in (24, 40, 64, 32, 48, 56):
        ids = torch.randint(0, vocab, (n,), generator=g)
        with torch.no_grad():
            logits = model(ids[None].to(device)).logits[0, :-1].float().cpu()
        lp = torch.cat([torch.zeros(1), torch.log_softmax(logits, -1).gather(-1, ids[1:, None])[:, 0]])
        mask = torch.zeros(n, dtype=torch.bool)
        mask[8:] = True
        adv = torch.randn(n, generator=g) * mask
        out.append(Experience(ids, mask, lp * mask, adv, ref_log_probs=lp - 0.05 * torch.arange(n) / n))
    return out


def _plain_update(model_dir: str, device: str, experiences: list) -> dict[str, torch.Tensor]:
    """The same update in plain torch, through full logits (not the chunked pass): token-mean PPO loss +
    0.1 k3 KL over the whole mini-batch, clip 1.0, AdamW."""
    from transformers import AutoModelForCausalLM

    from igpo_rlhf.algo import kl_penalty, masked_aggregate, policy_loss
    from igpo_rlhf.training.batch import pad_experiences
    from igpo_rlhf.training.logprobs import token_log_probs

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model = model.to(device)
    batch = pad_experiences(experiences).to(device)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    lp = token_log_probs(logits, batch.input_ids)
    mask = batch.action_mask
    loss, _ = policy_loss(lp, batch.old_log_probs, batch.advantages, mask)
    loss = loss + 0.1 * masked_aggregate(kl_penalty(lp, batch.ref_log_probs, mask=mask), mask)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), weight_decay=0.0).step()
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def check_zero(args: argparse.Namespace, stage: int) -> str:
    import ray

    from igpo_rlhf.config import load_config
    from igpo_rlhf.ray.group import ActorGroup
    from igpo_rlhf.ray.placement import place_roles, release
    from igpo_rlhf.ray.policy import PolicyActor
    from igpo_rlhf.training.batch import split_for_update

    cuda = args.device == "cuda"
    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, num_gpus=1 if cuda else 0,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # fmt: skip
    cfg = load_config(None, [f"model.path={args.model}", f"train.lr={LR}", f"train.zero_stage={stage}",
                             "train.micro_batch_size=2", "train.grad_clip=1.0", "train.logits_chunk=32",
                             "algorithm.kl_coef=0.1", "rollout.temperature=1.0", "resources.policy.num_cpus=1",
                             f"resources.policy.num_gpus={1 if cuda else 0}"])  # fmt: skip
    experiences = _experiences(args.model, args.device)
    placements = place_roles(cfg.resources, ["policy"])
    try:
        group = ActorGroup(PolicyActor, placements["policy"], distributed=True)
        group.call("init_model", cfg, grad_accum=3, total_optimizer_steps=1)
        plan = split_for_update(experiences, epochs=1, mini_batches=1, world_size=1, seed=0, step=1)
        [stats] = ray.get([group.actors[0].update.remote(plan[0])])
        ours = ray.get(group.call_async("state_dict_for_sync")[0])
        group.kill()
    finally:
        release(placements)
    plain = _plain_update(args.model, args.device, experiences)
    diff = max(float((ours[k].float() - plain[k].float()).abs().max()) for k in plain)
    if not diff < LR / 10:  # one AdamW step moves each weight by about lr: a tenth of it is a real difference
        raise AssertionError(f"max Δ weight {diff:.1e} against plain torch (lr {LR:g})")
    return f"max Δ weight {diff:.1e} vs plain torch (lr {LR:g}), grad norm {stats['grad_norm']:.3f}"


# ------------------------------------------------------------------------------------------- a step
def check_step(args: argparse.Namespace, engine: str) -> str:
    cuda = args.device == "cuda"
    work = Path(args.work).resolve()
    run_dir = work / f"step_{engine}"
    sets = [f"model.path={Path(args.model).resolve()}", f"logging.run_dir={run_dir}", "logging.progress_bar=false",
            f"data.world.dir={work / 'world'}", f"search.proxy.corpus={work / 'world' / 'corpus.jsonl'}",
            f"search.proxy.cache.dir={work / 'search_cache'}", "search.proxy.cache.mode=off", "train.steps=1",
            "train.prompts_per_step=2", "rollout.n_samples=2", "rollout.max_turns=2", "rollout.max_new_tokens=48",
            "train.micro_batch_size=4", "checkpoint.every_n_steps=1"]  # fmt: skip
    if cuda:
        sets += ONE_GPU
    if engine == "vllm":
        sets += ["rollout.engine=vllm", "rollout.vllm.tensor_parallel_size=1", "rollout.vllm.enforce_eager=true",
                 "rollout.vllm.gpu_memory_utilization=0.25"]  # fmt: skip
    sets += args.overrides
    command = [
        sys.executable,
        "-m",
        "igpo_rlhf.cli",
        "train",
        "-c",
        str(ROOT / "configs" / "demo.yaml"),
        "--overwrite",
    ]
    for item in sets:
        command += ["--set", item]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=args.step_timeout)
    (work / f"step_{engine}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        raise RuntimeError(f"igpo train exited {proc.returncode}; log: {work / f'step_{engine}.log'}: "
                           f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")  # fmt: skip
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    [row] = [r for r in rows if "time/step" in r]  # the step-0 row is the held-out baseline, not a step
    return (f"step {row['time/step']:.1f} s (rollout {row['time/rollout']:.1f}, update {row['time/update']:.1f}, "
            f"sync {row['time/sync']:.1f}), reward/f1 {row['reward/f1']:.2f}, policy/loss {row['policy/loss']:.3f}")  # fmt: skip


# ---------------------------------------------------------------------------------------------- main
def environment(device: str) -> str:
    import deepspeed
    import ray
    import transformers

    versions = f"torch {torch.__version__}, transformers {transformers.__version__}, ray {ray.__version__}, "
    versions += f"deepspeed {deepspeed.__version__}"
    if importlib.util.find_spec("vllm") is not None:
        import vllm

        versions += f", vllm {vllm.__version__}"
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        return f"{p.name}, {p.total_memory / 1e9:.0f} GB, CUDA {torch.version.cuda}; {versions}"
    return f"CPU; {versions}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", required=True, help="a Hugging Face model directory (igpo models get smollm2-135m)"
    )
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of: {', '.join(PARTS)}")
    ap.add_argument("--work", default="runs/gpu_check", help="run directories, logs and the world go here")
    ap.add_argument("--out", default=None, help="the table as markdown (default: WORK/results.md)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config overrides for the training steps")  # fmt: skip
    ap.add_argument("--step-timeout", type=float, default=420.0, help="seconds one training step may take")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        ap.error(f"--parts: unknown {unknown}; accepted: {', '.join(PARTS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error(
            "--device cuda: torch sees no GPU here (torch.cuda.is_available() is False); --device cpu for a dry run"
        )
    if not (Path(args.model) / "config.json").is_file():
        ap.error(
            f"--model {args.model}: not a model directory (no config.json); igpo models get smollm2-135m DIR"
        )
    Path(args.work).mkdir(parents=True, exist_ok=True)
    checks = {
        "scorer": lambda: check_scorer(args),
        "zero-2": lambda: check_zero(args, 2),
        "zero-3": lambda: check_zero(args, 3),
        "step-hf": lambda: check_step(args, "hf"),
        "step-vllm": lambda: check_step(args, "vllm"),
    }
    rows = []
    for part in parts:
        print(f"gpu_check: {part} ...", flush=True)
        if part == "step-vllm" and (args.device != "cuda" or importlib.util.find_spec("vllm") is None):
            why = "vllm is not installed (make install-gpu)" if args.device == "cuda" else "vLLM needs a GPU"
            rows.append(Row(part, "skipped", 0.0, why))
            continue
        t0 = time.perf_counter()
        try:
            rows.append(Row(part, "ok", time.perf_counter() - t0, checks[part]()))
        except Exception as exc:  # a failing part is reported in the table; the other parts still run
            rows.append(Row(part, "FAIL", time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"[:400]))
        rows[-1].seconds = time.perf_counter() - t0
    table = [f"gpu_check on {environment(args.device)}", "", "| part | status | seconds | result |",
             "|---|---|---:|---|"]  # fmt: skip
    table += [f"| {r.part} | {r.status} | {r.seconds:.0f} | {r.result} |" for r in rows]
    text = "\n".join(table) + "\n"
    out = Path(args.out or Path(args.work) / "results.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(text, end="")
    failed = [r.part for r in rows if r.status == "FAIL"]
    print(
        f"gpu_check: {len(rows) - len(failed)}/{len(rows)} parts passed or skipped; table in {out}",
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())

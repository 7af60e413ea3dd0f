"""`igpo sft OUT -c CONFIG`: warm-start a pretrained model on search demonstrations built from real QA data.

    igpo sft .cache/models/smollm2-135m-sft -c configs/smollm2_wiki.yaml --check-every 20

1. Demonstrations (`igpo_rlhf.sft.demos`) from the training questions (`--data`, default the R1-Searcher
   training set): search with the question over `search.proxy.corpus` (BM25, `search.proxy.bm25`, top
   `rollout.search_top_k`), then answer with the gold alias a retrieved passage holds; questions whose passages
   miss the answer, and every held-out `--check` question, are left out.
2. Each demonstration tokenised with the configured protocol exactly as the rollout loop builds a trajectory
   (prompt ids, turn ids, observation ids, each on its own), loss on the generated turns only
   (`igpo_rlhf.sft.loop`, the loop the tiny demo model is warm-started with).
3. A protocol check (`igpo_rlhf.sft.check`) on `--check-questions` held-out questions before training, every
   `--check-every` steps and at the end: share of rollouts that search then answer well-formed, and F1.

OUT gets the model (safetensors) and tokenizer of `model.path` fine-tuned, and `sft.json` (demonstration and
retrieval counts, options, losses, every check, minutes). OUT is written to a temporary sibling and renamed
into place when done; an existing OUT needs --overwrite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

TRAIN_DATA = "../shared/data/qa/r1searcher_train_stage2.jsonl"
CHECK_DATA = "../shared/data/qa/r1searcher_hotpotqa_500.jsonl"


@dataclass
class SFTOptions:
    """What `igpo sft` trains on and how long; every field is a command-line flag."""

    # SmolLM2-135M: 20 steps of 4 make 91% of sampled held-out rollouts search then answer, 80 steps 97%
    # (bench/RESULTS.md, "Real pretrained model")
    steps: int = 80
    batch_size: int = 4
    lr: float = 5e-5
    warmup: int = 5
    seed: int = 0
    max_demos: int = 1000  # demonstrations built (one epoch of `steps * batch_size` uses fewer)
    log_every: int = 5
    threads: int = 1  # torch threads; on a loaded 2-core machine generation was 3x faster on one than on two
    check_questions: int = 32  # held-out questions rolled out by each protocol check (0: no check)
    check_every: int = 0  # also check every N steps (0: only before and after training)
    check_samples: int = 1  # rollouts per held-out question


def run_sft(out: Path, cfg, opts: SFTOptions, data: list[str], check_data: str, model_path: str) -> dict:
    """Builds the demonstrations, trains, checks and saves into `out` (must not exist); the summary."""
    from igpo_rlhf.data.datasets import read_file
    from igpo_rlhf.models.loading import load_causal_lm, load_tokenizer
    from igpo_rlhf.rollout.protocols import make_protocol
    from igpo_rlhf.sft.check import check_protocol
    from igpo_rlhf.sft.demos import corpus_search, qa_demos, question_key
    from igpo_rlhf.sft.loop import encode_demo, supervised_train

    t0 = time.time()
    if cfg.search.proxy.corpus is None:
        raise ValueError("search.proxy.corpus is not set; the demonstrations search a passage corpus")
    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path, dtype="float32")
    protocol = make_protocol(cfg.rollout, tokenizer, cfg.algorithm.answer_probe)
    search = corpus_search(cfg.search.proxy.corpus, cfg.search.proxy.bm25)
    held_out = read_file(check_data)
    check_items = held_out[: opts.check_questions]
    items = [item for path in data for item in read_file(path)]
    demos, stats = qa_demos(items, search, top_k=cfg.rollout.search_top_k, max_demos=opts.max_demos,
                            seed=opts.seed, exclude={question_key(q.question) for q in held_out})  # fmt: skip
    examples = [encode_demo(d, protocol, tokenizer, cfg.rollout.max_observation_tokens) for d in demos]
    n_tokens = sum(len(x) for x, _ in examples)
    n_trained = sum(sum(v != -100 for v in y) for _, y in examples)
    print(
        f"sft: {len(demos)} demonstrations from {stats['questions_tried']} questions (answer retrieved for "
        f"{stats['retrieval_hit_rate']:.0%}); {n_tokens / len(examples):.0f} tokens each, "
        f"{n_trained / len(examples):.0f} trained; {opts.steps} steps of {opts.batch_size}",
        flush=True,
    )

    checks: list[dict] = []

    def check(step: int) -> None:
        if opts.check_questions < 1:
            return
        t = time.time()
        result, _ = check_protocol(model, tokenizer, protocol, search, check_items, cfg.rollout,
                                   n_samples=opts.check_samples, seed=opts.seed)  # fmt: skip
        checks.append({"step": step, **result.as_dict(), "seconds": round(time.time() - t, 1)})
        print(f"  check at step {step}: {result.line()} ({time.time() - t:.0f}s)", flush=True)

    def check_midway(step: int) -> None:
        if opts.check_every and step % opts.check_every == 0 and step < opts.steps:
            check(step)

    threads = torch.get_num_threads()
    torch.set_num_threads(opts.threads)
    try:
        check(0)
        t_train = time.time()
        losses = supervised_train(
            model, examples, steps=opts.steps, batch_size=opts.batch_size, lr=opts.lr, warmup=opts.warmup,
            seed=opts.seed, pad_id=tokenizer.pad_token_id, log_every=opts.log_every, after_step=check_midway,
        )  # fmt: skip
        train_seconds = time.time() - t_train
        check(opts.steps)
    finally:
        torch.set_num_threads(threads)

    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    summary = {
        "base_model": str(model_path),
        "protocol": cfg.rollout.protocol,
        "use_chat_template": cfg.rollout.use_chat_template,
        "train_data": data,
        "check_data": check_data,
        "options": asdict(opts),
        **stats,
        "demo_tokens_mean": round(n_tokens / len(examples), 1),
        "trained_tokens_mean": round(n_trained / len(examples), 1),
        "first_loss": statistics.fmean(losses[: opts.log_every]),
        "final_loss": statistics.fmean(losses[-opts.log_every :]),
        "train_minutes": round(train_seconds / 60, 2),
        "checks": checks,
        "minutes": round((time.time() - t0) / 60, 2),
    }
    (out / "sft.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    """`igpo sft OUT -c CONFIG`: warm-start model.path on search demonstrations from real QA data."""
    from igpo_rlhf.config import ConfigError, add_config_arguments, load_config

    defaults = SFTOptions()
    ap = argparse.ArgumentParser(prog="igpo sft", description=main.__doc__)
    ap.add_argument("out", help="output directory (Hugging Face format)")
    add_config_arguments(
        ap, required=True, what="model.path, rollout protocol and templates, search.proxy corpus"
    )
    ap.add_argument("--model", default=None, help="model to fine-tune (default: model.path of the config)")
    ap.add_argument(
        "--data", nargs="+", default=[TRAIN_DATA], help=f"training question files (default {TRAIN_DATA})"
    )
    ap.add_argument(
        "--check",
        default=CHECK_DATA,
        help=f"held-out questions for the protocol check (default {CHECK_DATA})",
    )
    ap.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    for name, value in asdict(defaults).items():
        ap.add_argument(
            f"--{name.replace('_', '-')}", type=type(value), default=value, help=f"(default {value})"
        )
    args = ap.parse_args(argv)
    opts = SFTOptions(**{name: getattr(args, name) for name in asdict(defaults)})
    try:
        cfg = load_config(args.config, args.overrides)
        model_path = args.model or cfg.model.path
        from igpo_rlhf.models.loading import check_model_dir

        check_model_dir(model_path, "--model" if args.model else "model.path")
        for path in [*args.data, args.check]:
            if not Path(path).is_file():
                raise ValueError(f"question file {path} does not exist")
        out = Path(args.out)
        if out.exists() and any(out.iterdir()) and not args.overwrite:
            raise ValueError(f"{out} exists and is not empty; pass --overwrite to replace it")
    except (ConfigError, ValueError) as exc:
        print(f"igpo sft: {exc}", file=sys.stderr)
        return 2
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        summary = run_sft(tmp, cfg, opts, args.data, args.check, model_path)
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except ValueError as exc:
        print(f"igpo sft: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    last = summary["checks"][-1] if summary["checks"] else None
    checked = (
        f"; held-out: searched then answered {last['searched_then_answered']:.0%}, F1 {last['f1']:.3f}"
        if last
        else ""
    )
    print(f"saved {out} ({summary['minutes']:.1f} min, final loss {summary['final_loss']:.3f}{checked})")
    return 0

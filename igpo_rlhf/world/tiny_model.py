"""`igpo make-tiny-model OUT`: the small warm-started search agent the CPU demo trains.

1. A byte-level BPE tokenizer trained on the world's corpus and rendered demonstrations, with the Qwen2
   pre-tokenizer (split regex, NFC) so that `AutoTokenizer.from_pretrained(OUT)` -- which rebuilds a
   `Qwen2Tokenizer` from vocab and merges -- gives the very ids we trained with. The protocol tags
   (`<think>`, `<search>`, `<answer>`, `<information>`, ... and their closing tags) are added tokens, one
   id each, not special (decoding keeps them); `<|endoftext|>` is EOS and pad.
2. A small Qwen2-architecture causal LM built from a config (no download), seeded.
3. A short supervised pass on the demonstrations (`igpo_rlhf.world.demos`): the loss covers only the
   tokens the policy generates (thinking, search calls, the answer), never the prompt or observations,
   which are tokenised on their own exactly as the rollout loop appends them. The loop is
   `igpo_rlhf.sft.loop`, the one `igpo sft` warm-starts a real pretrained model with.

The result is saved with `save_pretrained` (model and tokenizer) and reloads with
`AutoModelForCausalLM.from_pretrained(OUT)` / `AutoTokenizer.from_pretrained(OUT)`. Deterministic given
the seed. The tiny model is world-only: its tokenizer and warm start cover the built-in world's names;
the shipped Wikipedia data needs a real pretrained model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from igpo_rlhf.sft.demos import render_demo
from igpo_rlhf.sft.loop import encode_demo, supervised_train

EOS = "<|endoftext|>"
# Protocol tags that must be single tokens, by protocol. Only search_r1: the tiny model has no chat
# template, so it does not speak the tool_call protocol (`make_tiny_model` says so when asked).
PROTOCOL_TAGS = {
    "search_r1": ("<think>", "</think>", "<search>", "</search>", "<answer>", "</answer>", "<information>",
                  "</information>"),
}  # fmt: skip


@dataclass
class TinyModelOptions:
    """Size of the tiny model and of its warm start."""

    vocab_size: int = 2048  # BPE merges stop earlier if the corpus runs out of pairs
    hidden_size: int = 128
    layers: int = 2  # two layers are enough to copy names from context (induction), and twice as fast as 4
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 384
    max_positions: int = 2048
    steps: int = (
        1600  # supervised optimiser steps (~95 s of one CPU core); 800 leave a copier too weak for RL
    )
    batch_size: int = 4  # small batches, more updates: learns copying sooner per token than batch 8 or 16
    lr: float = 5e-3
    warmup: int = 20
    seed: int = 0
    log_every: int = 50
    # torch threads for the warm start: small matmuls gain little from a second thread, and on a busy
    # machine OpenMP threads waiting on each other made a step 10-20x slower than one thread (measured)
    threads: int = 1


# --------------------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts: list[str], vocab_size: int, tags: Sequence[str] = PROTOCOL_TAGS["search_r1"]):
    """A Qwen2Tokenizer whose BPE vocab and merges are trained on `texts`; `tags` are added tokens.

    The pre-tokenizer, normalizer and decoder are those Qwen2Tokenizer builds itself, so the saved
    tokenizer reloads through AutoTokenizer with identical ids."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    model = json.loads(bpe.to_str())["model"]
    tok = Qwen2Tokenizer(
        vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]], eos_token=EOS, pad_token=EOS
    )
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in tags])
    return tok


# ------------------------------------------------------------------------------------------- model
def build_model(vocab_size: int, opts: TinyModelOptions, eos_id: int):
    """A freshly initialised Qwen2ForCausalLM of the configured size (seeded by opts.seed)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=opts.hidden_size,
        intermediate_size=opts.intermediate_size,
        num_hidden_layers=opts.layers,
        num_attention_heads=opts.heads,
        num_key_value_heads=opts.kv_heads,
        max_position_embeddings=opts.max_positions,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    torch.manual_seed(opts.seed)
    return Qwen2ForCausalLM(config)


# -------------------------------------------------------------------------------------------- build
def load_demos(world_dir: str | Path) -> list[dict]:
    """The demonstration rows of a rendered world (`demos.jsonl`)."""
    path = Path(world_dir) / "demos.jsonl"
    if not path.is_file():
        raise ValueError(f"{path} does not exist; render the world first: igpo build-world {world_dir}")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _text_protocol(rollout_cfg):
    """The rollout protocol, before any tokenizer exists (search_r1 renders text without one)."""
    from igpo_rlhf.rollout.protocols import make_protocol

    if rollout_cfg.protocol != "search_r1" or rollout_cfg.use_chat_template:
        raise ValueError(
            f"rollout.protocol={rollout_cfg.protocol!r} with use_chat_template={rollout_cfg.use_chat_template}: "
            "the tiny model is built for protocol search_r1 without a chat template (it has no chat template)"
        )
    return make_protocol(rollout_cfg, None, "<answer>")


def make_tiny_model(out: str | Path, world_dir: str | Path, cfg, opts: TinyModelOptions) -> dict:
    """Tokenizer + model + warm start from the world in `world_dir`, saved into `out`; returns a summary."""
    from igpo_rlhf.rollout.protocols import make_protocol

    t0 = time.time()
    demos = load_demos(world_dir)
    text_protocol = _text_protocol(cfg.rollout)
    rendered = [render_demo(d, text_protocol) for d in demos]
    with open(Path(world_dir) / "corpus.jsonl", encoding="utf-8") as f:
        corpus_texts = [json.loads(line)["contents"] for line in f if line.strip()]
    texts = corpus_texts + ["".join(t for _, t in segs) for segs in rendered]
    tokenizer = train_tokenizer(texts, opts.vocab_size, PROTOCOL_TAGS[cfg.rollout.protocol])
    protocol = make_protocol(cfg.rollout, tokenizer, cfg.algorithm.answer_probe)
    examples = [encode_demo(d, protocol, tokenizer, cfg.rollout.max_observation_tokens) for d in demos]
    n_tokens = sum(len(x) for x, _ in examples)
    n_trained = sum(sum(1 for v in y if v != -100) for _, y in examples)
    model = build_model(len(tokenizer), opts, tokenizer.eos_token_id)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"tiny model: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}; warm start on {len(examples)} "
        f"demonstrations ({n_tokens} tokens, {n_trained} trained)",
        flush=True,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(opts.threads)
    try:
        losses = supervised_train(model, examples, steps=opts.steps, batch_size=opts.batch_size, lr=opts.lr,
                                  warmup=opts.warmup, seed=opts.seed, pad_id=tokenizer.pad_token_id,
                                  log_every=opts.log_every)  # fmt: skip
    finally:
        torch.set_num_threads(threads)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    summary = {
        "world_dir": str(world_dir),
        "protocol": cfg.rollout.protocol,
        "options": asdict(opts),
        "parameters": n_params,
        "vocab": len(tokenizer),
        "demos": len(examples),
        "demo_tokens": n_tokens,
        "trained_tokens": n_trained,
        "first_loss": statistics.fmean(losses[: opts.log_every]),
        "final_loss": statistics.fmean(losses[-opts.log_every :]),
        "seconds": round(time.time() - t0, 1),
    }
    (out / "tiny_model.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    """`igpo make-tiny-model OUT`: tokenizer + small Qwen2 model warm-started on the world's demonstrations."""
    from igpo_rlhf.config import ConfigError, add_config_arguments, load_config
    from igpo_rlhf.world.world import build_world, world_is_built

    defaults = TinyModelOptions()
    ap = argparse.ArgumentParser(prog="igpo make-tiny-model", description=main.__doc__)
    ap.add_argument("out", help="output directory (Hugging Face format)")
    ap.add_argument(
        "--world", default=None, help="world directory (default: data.world.dir); built there if missing"
    )
    add_config_arguments(ap, what="rollout protocol and templates, data.world")
    for name, value in asdict(defaults).items():
        ap.add_argument(
            f"--{name.replace('_', '-')}", type=type(value), default=value, help=f"(default {value})"
        )
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    opts = TinyModelOptions(**{name: getattr(args, name) for name in asdict(defaults)})
    # an explicit --world is used as it is; the config's world dir is (re)built to match the config,
    # exactly as the trainer's `world:` datasets do, so the model and the training run share one world
    world_dir = args.world or cfg.data.world.dir
    missing = not (Path(world_dir) / "world.json").is_file()
    if missing or (args.world is None and not world_is_built(world_dir, cfg.data.world)):
        print(f"building the world into {world_dir}", flush=True)
        build_world(
            world_dir, cfg.data.world, search_top_k=cfg.rollout.search_top_k, bm25=cfg.search.proxy.bm25
        )
    try:
        summary = make_tiny_model(args.out, world_dir, cfg, opts)
    except ValueError as exc:
        print(f"igpo make-tiny-model: {exc}", file=sys.stderr)
        return 2
    print(f"saved {args.out} ({summary['seconds']}s, final loss {summary['final_loss']:.3f})")
    return 0

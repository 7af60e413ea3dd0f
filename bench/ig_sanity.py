"""Does information gain mean something on real text with a small real model? The belief in the gold answer after
a passage that holds the answer, against after a random passage.

    python bench/ig_sanity.py -c configs/smollm2_wiki.yaml \
        --model zero-shot=.cache/models/smollm2-135m --model sft=.cache/models/smollm2-135m-sft -n 100

For each held-out question (`--questions`, default HotpotQA r1searcher_hotpotqa_500) whose BM25 search (the
question as the query, top `--top-k`, the search proxy's backend in process over `search.proxy.corpus`)
retrieves a passage holding a gold alias (normalised as the F1 scorer does): two contexts, identical but for
the passage in the observation,

    prompt (the configured protocol) + search turn (the question as the query) + observation of ONE passage

once with that gold passage and once with a random corpus passage that holds no gold alias (seeded), rendered
by the same protocol templates. The belief is log b as the IGPO scorer computes it (`score_beliefs`: the
answer probe `algorithm.answer_probe`, the gold aliases as the policy writes them after it, best alias), at
the prompt (c_0) and after the observation (c_1). Reported per model: the share of questions where the gold
passage gives the higher belief (so the larger information gain r = b_1 - b_0: c_0 is shared), the mean of
log b_gold - log b_random, and the mean IG r = b_1 - b_0 (prob_diff) after each passage.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from igpo_rlhf.config import load_config  # noqa: E402
from igpo_rlhf.data.datasets import read_file  # noqa: E402
from igpo_rlhf.models.loading import load_causal_lm, load_tokenizer  # noqa: E402
from igpo_rlhf.rollout.protocols import make_protocol  # noqa: E402
from igpo_rlhf.scoring import score_beliefs  # noqa: E402
from igpo_rlhf.scoring.probe import alias_token_ids, answer_separator, probe_token_ids  # noqa: E402
from igpo_rlhf.sft.demos import SEARCH_THINK, corpus_search, gold_in_passages  # noqa: E402


def pairs(questions, search, corpus_rows, n: int, top_k: int, seed: int) -> tuple[list[tuple], int]:
    """Up to n (item, gold passage, random passage); and how many questions were looked at."""
    rng = random.Random(seed)
    out, looked = [], 0
    for item in questions:
        if len(out) >= n:
            break
        looked += 1
        found = gold_in_passages(item.golds, search.search([item.question], top_k)[0])
        if found is None:
            continue
        while True:
            other = corpus_rows[rng.randrange(len(corpus_rows))]
            if gold_in_passages(item.golds, [other]) is None and other["id"] != found[1]["id"]:
                break
        out.append((item, found[1], other))
    return out, looked


def measure(model_path: str, cfg, chosen: list[tuple], max_obs_tokens: int) -> dict:
    """Beliefs at c_0 and after the gold / the random passage for every chosen question, and their summary."""
    tok = load_tokenizer(model_path)
    model = load_causal_lm(model_path)
    protocol = make_protocol(cfg.rollout, tok, cfg.algorithm.answer_probe)
    separator = answer_separator(
        cfg.algorithm.answer_separator, cfg.rollout.system_prompt, cfg.rollout.prompt_template
    )
    probe = probe_token_ids(tok, cfg.algorithm.answer_probe)
    sequences, points, answers = [], [], []
    for item, gold, other in chosen:
        prompt = protocol.prompt_ids(item.question)
        turn = tok.encode(
            protocol.demo_turn_text(think=SEARCH_THINK, queries=[item.question]), add_special_tokens=False
        )
        aliases = alias_token_ids(tok, cfg.algorithm.answer_probe, item.golds, separator)
        for passage in (gold, other):
            obs = protocol.observation_ids([[passage]], max_tokens=max_obs_tokens, queries=[item.question])
            ids = prompt + turn + obs
            sequences.append(ids)
            points.append([len(prompt), len(ids)])
            answers.append(aliases)
    t0 = time.time()
    beliefs = score_beliefs(model, sequences, points, probe, answers, alias_reduce=cfg.algorithm.alias_reduce)
    seconds = time.time() - t0
    gold_b = [(b0, b1) for b0, b1 in beliefs[0::2]]
    rand_b = [(b0, b1) for b0, b1 in beliefs[1::2]]
    diffs = [g[1] - r[1] for g, r in zip(gold_b, rand_b, strict=True)]
    ig = [[math.exp(b1) - math.exp(b0) for b0, b1 in bs] for bs in (gold_b, rand_b)]
    return {
        "model": model_path,
        "questions": len(chosen),
        "gold_higher_share": sum(d > 0 for d in diffs) / len(diffs),
        "mean_log_b_diff": statistics.fmean(diffs),
        "median_log_b_diff": statistics.median(diffs),
        "mean_log_b0": statistics.fmean(b[0] for b in gold_b),
        "mean_log_b_gold": statistics.fmean(b[1] for b in gold_b),
        "mean_log_b_random": statistics.fmean(b[1] for b in rand_b),
        "mean_ig_gold": statistics.fmean(ig[0]),
        "mean_ig_random": statistics.fmean(ig[1]),
        "ig_positive_share_gold": sum(x > 0 for x in ig[0]) / len(ig[0]),
        "ig_positive_share_random": sum(x > 0 for x in ig[1]) / len(ig[1]),
        "scoring_seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "-c", "--config", default="configs/smollm2_wiki.yaml", help="protocol, templates, probe, corpus"
    )
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="LABEL=PATH",
        help="a model to measure (repeatable)",
    )
    ap.add_argument("--questions", default="../shared/data/qa/r1searcher_hotpotqa_500.jsonl")
    ap.add_argument("-n", type=int, default=100, help="questions with a retrieved gold passage to use")
    ap.add_argument("--top-k", type=int, default=5, help="passages searched for one holding the answer")
    ap.add_argument("--max-observation-tokens", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    models = [m.split("=", 1) for m in args.model]
    if any(len(m) != 2 for m in models):
        ap.error(f"--model takes LABEL=PATH, got {args.model}")
    from services.search_proxy.corpus import read_corpus

    corpus_rows = [
        {"id": p.id, "title": p.title, "text": p.text} for p in read_corpus(cfg.search.proxy.corpus)
    ]
    search = corpus_search(cfg.search.proxy.corpus, cfg.search.proxy.bm25)
    chosen, looked = pairs(read_file(args.questions), search, corpus_rows, args.n, args.top_k, args.seed)
    print(
        f"{len(chosen)} questions with a retrieved gold passage (of {looked} looked at, top {args.top_k})",
        flush=True,
    )
    results = {"questions_file": args.questions, "looked_at": looked, "top_k": args.top_k, "seed": args.seed,
               "config": args.config, "overrides": args.overrides, "models": {}}  # fmt: skip
    print(f"{'model':<12} {'gold > random':>13} {'mean Δ log b':>12} {'log b0':>7} {'log b gold':>10} "
          f"{'log b rand':>10} {'IG gold':>8} {'IG rand':>8}")  # fmt: skip
    for label, path in models:
        r = measure(path, cfg, chosen, args.max_observation_tokens)
        results["models"][label] = r
        print(f"{label:<12} {r['gold_higher_share']:>13.0%} {r['mean_log_b_diff']:>12.3f} {r['mean_log_b0']:>7.2f} "
              f"{r['mean_log_b_gold']:>10.2f} {r['mean_log_b_random']:>10.2f} {r['mean_ig_gold']:>8.4f} "
              f"{r['mean_ig_random']:>8.4f}", flush=True)  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    where = f", written to {args.out}" if args.out else ""
    print(f"ig_sanity: {len(models)} model(s) on {len(chosen)} questions{where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

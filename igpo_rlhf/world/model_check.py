"""Does the tiny model behave like a search agent? Sampled rollouts on held-out world questions.

The real pipeline pieces: the search proxy (a subprocess serving the world corpus with BM25, started
here), `run_rollouts` with the CPU `HFEngine` at the config's sampling settings (temperature 1.0, top_p
1.0 by default). It measures

- the share of rollouts with at least one well-formed search, and with a search before their answer;
- the share with a well-formed answer, answer F1 (0 without an answer), turns and searches per rollout;
- whether beliefs move: log b = mean log-prob of the gold answer after context + answer probe
  (DESIGN.md "Belief"; the trainer's belief scorer with the trainer's alias tokenisation, best alias), at
  the prompt alone (log b_{i,0}) and after each observation that shows the gold answer. IG is a useful
  signal only if the latter is higher on average.

    python -m igpo_rlhf.world.model_check MODEL_DIR [--world runs/world] [-n 64] [-c CONFIG]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from igpo_rlhf.rewards import f1_score, normalize_answer


def log_beliefs(
    model, tokenizer, probe_text: str, ids: list[int], points: list[int], golds: list[str]
) -> list[float]:
    """log b at each belief point of one token sequence, exactly as the trainer's scorer computes it."""
    from igpo_rlhf.scoring import score_beliefs
    from igpo_rlhf.scoring.probe import alias_token_ids, probe_token_ids

    probe = probe_token_ids(tokenizer, probe_text)
    return score_beliefs(model, [ids], [points], probe, [alias_token_ids(tokenizer, probe_text, golds)])[0]


def forced_beliefs(model, tokenizer, protocol, world_dir: str | Path, cfg, n: int) -> dict:
    """Beliefs along good trajectories (the demonstration recipe) for the first `n` test questions:
    log b at the prompt alone and after each observation. The last observation holds the answer, so a
    model that reads it should put more probability on the gold there than at the prompt."""
    from igpo_rlhf.sft.demos import BM25Search, demo_token_segments
    from igpo_rlhf.world.demos import demo_steps
    from igpo_rlhf.world.world import all_questions, fact_passage_ids, generate_world

    world_dir = Path(world_dir)
    settings = json.loads((world_dir / "world.json").read_text(encoding="utf-8"))["settings"]
    world = generate_world(settings["n_people"], settings["seed"])
    by_text = {q.text: q for q in all_questions(world, settings["max_hops"])}
    corpus = [
        json.loads(line) for line in (world_dir / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    search, gold_ids = BM25Search(corpus, cfg.search.proxy.bm25), fact_passage_ids(world)
    rows = [json.loads(line) for line in (world_dir / "test.jsonl").read_text(encoding="utf-8").splitlines()][
        :n
    ]
    first, last, middle = [], [], []
    for row in rows:
        steps = demo_steps(by_text[row["question"]], search, gold_ids, cfg.rollout.search_top_k)
        ids, points = [], []
        for kind, part in demo_token_segments(
            {**row, "steps": steps}, protocol, tokenizer, cfg.rollout.max_observation_tokens
        ):
            ids += part
            if kind in ("prompt", "observation"):
                points.append(len(ids))
        beliefs = log_beliefs(model, tokenizer, cfg.algorithm.answer_probe, ids, points, row["answers"])
        first.append(beliefs[0])
        last.append(beliefs[-1])
        middle += beliefs[1:-1]
    return {
        "questions": len(rows),
        "log_b_prompt_mean": statistics.fmean(first),
        "log_b_after_intermediate_obs_mean": statistics.fmean(middle) if middle else None,
        "log_b_after_answer_obs_mean": statistics.fmean(last),
        "share_belief_rose": statistics.fmean(b1 > b0 for b0, b1 in zip(first, last, strict=True)),
    }


def check_model(model_dir: str | Path, world_dir: str | Path, cfg, n: int = 64, seed: int = 0) -> dict:
    """Roll out `n` test questions of the world (one rollout each) and measure format, F1 and beliefs."""
    from igpo_rlhf.data.datasets import load_questions
    from igpo_rlhf.models.loading import load_causal_lm, load_tokenizer
    from igpo_rlhf.rollout.agent_loop import rollouts_for_config
    from igpo_rlhf.rollout.engine import HFEngine
    from igpo_rlhf.rollout.protocols import make_protocol
    from igpo_rlhf.rollout.searcher import ProxySearcher
    from services.search_proxy.launch import start_proxy

    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir)
    protocol = make_protocol(cfg.rollout, tokenizer, cfg.algorithm.answer_probe)
    questions = load_questions(["world:test"], world_dir=world_dir)
    rng = random.Random(seed)
    prompts = [rng.choice(questions) for _ in range(n)]
    settings = cfg.search.proxy.model_copy(
        update={"backend": "bm25", "corpus": Path(world_dir) / "corpus.jsonl", "log_level": "warning"}
    )
    cache = settings.cache.model_copy(
        update={"mode": "off", "dir": Path(tempfile.mkdtemp(prefix="model_check."))}
    )
    with start_proxy(settings.model_copy(update={"cache": cache})) as proxy:
        trajectories = rollouts_for_config(
            HFEngine(model, tokenizer),
            tokenizer,
            protocol,
            ProxySearcher(proxy.url, timeout_s=60, retries=2),
            prompts,
            cfg.rollout.model_copy(update={"n_samples": 1}),
            seed=seed,
            weights_version=0,
        )

    rows = []
    for t in trajectories:
        ids, points = t.token_ids, t.belief_points
        golds = [normalize_answer(g) for g in t.golds]
        # belief points after each observation that shows the gold answer
        right = [
            end
            for start, end in t.obs_spans
            if any(g in normalize_answer(tokenizer.decode(ids[start:end])) for g in golds)
        ]
        b0, *b_right = log_beliefs(
            model, tokenizer, cfg.algorithm.answer_probe, ids, [points[0], *right], t.golds
        )
        rows.append(
            {
                "question": t.question,
                "golds": t.golds,
                "hops": t.meta.get("hops"),
                "searches": t.n_searches,
                "answer": t.answer,
                "finish": t.finish_reason,
                "f1": f1_score(t.answer, t.golds) if t.answer is not None else 0.0,
                "turns": t.num_turns,
                "log_b0": b0,
                "log_b_right": b_right,
                "text": tokenizer.decode(ids[t.prompt_len :]),
            }
        )
    seen = [row for row in rows if row["log_b_right"]]
    summary = {
        "rollouts": n,
        "share_searched": statistics.fmean(row["searches"] > 0 for row in rows),
        "share_searched_then_answered": statistics.fmean(
            row["searches"] > 0 and row["answer"] is not None for row in rows
        ),
        "share_answered": statistics.fmean(row["answer"] is not None for row in rows),
        "f1": statistics.fmean(row["f1"] for row in rows),
        "f1_by_hops": {
            h: statistics.fmean(row["f1"] for row in rows if row["hops"] == h)
            for h in sorted({row["hops"] for row in rows})
        },
        "turns_per_rollout": statistics.fmean(row["turns"] for row in rows),
        "searches_per_rollout": statistics.fmean(row["searches"] for row in rows),
        "finish_reasons": {
            f: sum(row["finish"] == f for row in rows) for f in sorted({row["finish"] for row in rows})
        },
        "rollouts_that_saw_the_answer": len(seen),
        "log_b0_mean": statistics.fmean(row["log_b0"] for row in seen) if seen else None,
        "log_b_after_answer_obs_mean": statistics.fmean(max(row["log_b_right"]) for row in seen)
        if seen
        else None,
        "share_belief_rose": statistics.fmean(max(row["log_b_right"]) > row["log_b0"] for row in seen)
        if seen
        else None,
    }
    summary["forced"] = forced_beliefs(model, tokenizer, protocol, world_dir, cfg, n)
    return {"summary": summary, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    """Roll out a tiny model on the world's test questions; print format, F1 and belief figures."""
    from igpo_rlhf.config import ConfigError, add_config_arguments, load_config

    ap = argparse.ArgumentParser(prog="python -m igpo_rlhf.world.model_check", description=main.__doc__)
    ap.add_argument("model", help="model directory (make-tiny-model output)")
    ap.add_argument("--world", default=None, help="world directory (default: data.world.dir)")
    ap.add_argument("-n", type=int, default=64, help="rollouts (test questions drawn with replacement)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--show", type=int, default=3, help="print this many rollouts in full")
    add_config_arguments(ap)
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    result = check_model(args.model, args.world or cfg.data.world.dir, cfg, args.n, args.seed)
    for row in result["rows"][: args.show]:
        print(json.dumps(row, ensure_ascii=False))
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

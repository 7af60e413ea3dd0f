"""`igpo eval`: the training agent loop over held-out questions; scores per source, the rollouts, the setting.

    igpo eval -c CONFIG [--set k=v ...] [--data FILE ...] [--sources S ...] [--limit-per-source N]
              [--n-samples K] [--model DIR] [--beliefs] [--device cpu|cuda] --out DIR

The same pieces as training: `make_protocol` over the config's rollout section, `rollouts_for_config` with the
rollout section's budgets and the `eval` section's sampling (greedy by default), the search proxy started from
`search.proxy` exactly as `igpo train` starts it (or `search.url`) behind `ProxySearcher`. Engines
(`rollout.engine`): hf (transformers in-process, CPU or GPU), openai (an OpenAI-compatible endpoint,
`rollout.openai`), vllm (GPU; vLLM engine actors through Ray -- a thin path not exercised on CPU machines).

Questions are rolled out in chunks of `eval.chunk_size` (in source order); each finished chunk is appended
to DIR/rollouts.jsonl and flushed, with the chunk's seed derived from `eval.seed` and the chunk index, so an
interrupted run continues from its last complete chunk and ends with the scores an uninterrupted run gives.
DIR/setting.json holds the setting; a rerun with another setting into the same DIR is refused.

Exit codes: 0 done; 2 bad input (config, data file, source filter, model path, output directory of another
setting, an endpoint down after its retries -- finished chunks are kept), message on stderr, no traceback;
130 interrupted (finished chunks are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from igpo_rlhf.config import Config, ConfigError, add_config_arguments, load_config
from igpo_rlhf.eval.questions import load_eval_questions
from igpo_rlhf.eval.scores import (
    QUESTION_KEY,
    EvalRow,
    EvalScores,
    aggregate,
    score_row,
    score_rows,
    table_markdown,
)
from igpo_rlhf.eval.setting import eval_setting, search_setting, setting_differences
from igpo_rlhf.rollout.agent_loop import Searcher, call_seed, rollouts_for_config
from igpo_rlhf.rollout.openai_engine import EndpointError
from igpo_rlhf.rollout.trajectory import PromptItem, Trajectory

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from igpo_rlhf.config import EvalConfig, RolloutConfig
    from igpo_rlhf.rollout.engine import Engine
    from igpo_rlhf.rollout.protocols import AgentProtocol

ROLLOUTS, SCORES, TABLE, SETTING = "rollouts.jsonl", "scores.json", "table.md", "setting.json"


# --------------------------------------------------------------------------------- (a) generating
def eval_sampling(eval_cfg: EvalConfig, n_samples: int | None = None) -> dict[str, Any]:
    """Rollout-section fields that evaluation overrides (`RolloutActor.generate(..., sampling=...)` takes it)."""
    return {
        "n_samples": eval_cfg.n_samples if n_samples is None else n_samples,
        "temperature": eval_cfg.temperature,
        "top_p": eval_cfg.top_p,
        "top_k": eval_cfg.top_k,
    }


def eval_rollout_config(cfg: Config, n_samples: int | None = None) -> RolloutConfig:
    """The rollout section with evaluation's sampling (greedy by default): budgets, templates, turns unchanged."""
    return cfg.rollout.model_copy(update=eval_sampling(cfg.eval, n_samples))


def generate_trajectories(
    engine: Engine,
    tokenizer: PreTrainedTokenizerBase,
    protocol: AgentProtocol,
    searcher: Searcher,
    prompts: Sequence[PromptItem],
    cfg: Config,
    *,
    seed: int | None,
    n_samples: int | None = None,
) -> list[Trajectory]:
    """Evaluation rollouts of `prompts`: the training agent loop with the eval sampling of `cfg.eval`."""
    return rollouts_for_config(
        engine,
        tokenizer,
        protocol,
        searcher,
        list(prompts),
        eval_rollout_config(cfg, n_samples),
        seed=seed,
        weights_version=0,
    )


def belief_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    trajectories: Sequence[Trajectory],
    cfg: Config,
) -> list[list[float]]:
    """log b_{i,t} at every belief point of every trajectory: the trainer's belief scorer (`score_beliefs`)
    with the answer probe and alias reduction of `cfg.algorithm`."""
    from igpo_rlhf.scoring import score_beliefs
    from igpo_rlhf.scoring.probe import alias_token_ids, probe_token_ids, run_answer_separator

    probe, separator = cfg.algorithm.answer_probe, run_answer_separator(cfg)
    return score_beliefs(
        model,
        [t.token_ids for t in trajectories],
        [t.belief_points for t in trajectories],
        probe_token_ids(tokenizer, probe),
        [alias_token_ids(tokenizer, probe, t.golds, separator) for t in trajectories],
        alias_reduce=cfg.algorithm.alias_reduce,
        token_budget=cfg.scorer.token_budget,
    )


# --------------------------------------------------------------------------------------- engines
def build_engine(
    cfg: Config, tokenizer: PreTrainedTokenizerBase, protocol: AgentProtocol, device: str
) -> Any:
    """The generator `rollout.engine` names."""
    engine = cfg.rollout.engine
    if engine == "hf":
        from igpo_rlhf.models.loading import load_causal_lm
        from igpo_rlhf.rollout.engine import HFEngine

        model = load_causal_lm(
            cfg.model.path, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code
        )
        return HFEngine(model, tokenizer, device=device)
    if engine == "openai":
        from igpo_rlhf.rollout.openai_engine import OpenAIEngine

        return OpenAIEngine.from_config(
            cfg.rollout.openai, tokenizer, model_path=cfg.model.path, protocol=protocol
        )
    if engine == "vllm":  # GPU only: the training path's vLLM engine actors, one per resources.rollout actor
        import ray

        from igpo_rlhf.rollout.vllm_engine import VLLMEngine, create_engines_from_config

        if not ray.is_initialized():
            ray.init(address=cfg.resources.ray_address or os.environ.get("RAY_ADDRESS") or "local")
        actors, group = create_engines_from_config(cfg, seed=cfg.eval.seed)
        return VLLMEngine(actors, placement_group=group)  # close() kills the engines and frees their GPUs
    raise ValueError(f"rollout.engine={engine!r}; accepted: hf, openai, vllm")


# --------------------------------------------------------------------------------- rollouts.jsonl
def rollout_row(
    traj: Trajectory, row: EvalRow, tokenizer: PreTrainedTokenizerBase, chunk: int
) -> dict[str, Any]:
    """One rollouts.jsonl row: the training rollouts' layout (`Trajectory.to_json(tokenizer)`) plus the
    source, sample, chunk and the row's metrics (and beliefs)."""
    out = traj.to_json(tokenizer)
    out |= {"source": row.source, "key": row.question, "sample": row.sample, "chunk": chunk, **row.metrics()}
    if row.beliefs is not None:
        out["beliefs"] = row.beliefs
    return out


def row_from_json(data: dict[str, Any]) -> EvalRow:
    """The EvalRow of a rollouts.jsonl row, re-scored from its trajectory (beliefs as stored)."""
    return score_row(Trajectory.from_json(data), data.get("beliefs"))


def read_complete_chunks(
    path: Path, expected: list[list[str]], n_samples: int
) -> dict[int, list[dict[str, Any]]]:
    """Rows of the chunks that rollouts.jsonl holds in full (chunk c: keys `expected[c]` × n_samples samples).

    A torn last line (the run was killed while writing) and the rows of incomplete chunks are dropped, and
    the file is rewritten without them, so appending continues from complete chunks only."""
    if not path.is_file():
        return {}
    rows: dict[int, list[dict[str, Any]]] = {}
    kept_lines = []
    dropped = 0
    with path.open(encoding="utf-8") as f:
        lines = f.read().split("\n")
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            if k >= len(lines) - 2:  # only the last line can be torn
                dropped += 1
                continue
            raise ValueError(
                f"{path} line {k + 1} is not JSON; it is not an igpo eval rollouts file"
            ) from None
        c = data.get("chunk")
        if not isinstance(c, int) or not 0 <= c < len(expected) or data.get("key") not in expected[c]:
            raise ValueError(
                f"{path} line {k + 1} (key {data.get('key')!r}, chunk {c!r}) is not a question of this evaluation"
            )
        rows.setdefault(c, []).append(data)
        kept_lines.append((c, line))
    complete = {
        c: r
        for c, r in rows.items()
        if sorted((d["key"], d["sample"]) for d in r)
        == sorted((q, s) for q in expected[c] for s in range(n_samples))
    }
    dropped += sum(len(r) for c, r in rows.items() if c not in complete)
    if dropped:
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for c, line in kept_lines if c in complete), encoding="utf-8")
        os.replace(tmp, path)
    return complete


# ------------------------------------------------------------------------------------------- the run
def run_eval(
    cfg: Config,
    out_dir: str | Path,
    *,
    data: Sequence[str] | None = None,
    beliefs: bool = False,
    device: str | None = None,
    log: Callable[[str], None] = print,
) -> EvalScores:
    """Evaluates `cfg.model.path` on `data` (default `cfg.data.eval`) into `out_dir`; the final scores.

    Sources, limit, samples and sampling come from `cfg.eval`. Raises ValueError / ConfigError for bad input,
    EndpointError when an endpoint fails after its retries (finished chunks are kept in rollouts.jsonl)."""
    from igpo_rlhf.models.loading import check_model_dir, load_causal_lm, load_tokenizer
    from igpo_rlhf.rollout.protocols import make_protocol
    from igpo_rlhf.rollout.searcher import ProxySearcher

    e = cfg.eval
    data = list(data) if data else list(cfg.data.eval)
    if not data:
        raise ValueError(
            "no evaluation data: pass --data FILE (or world:test), or set data.eval in the config"
        )
    if e.n_samples > 1 and e.temperature == 0:
        raise ValueError(
            f"--n-samples {e.n_samples} with eval.temperature=0 gives {e.n_samples} identical greedy rollouts; "
            "set eval.temperature > 0 (e.g. --set eval.temperature=1.0) for avg@K / pass@K"
        )
    if beliefs and cfg.rollout.engine == "vllm":
        raise ValueError(
            "--beliefs scores with a transformers copy of the model; use rollout.engine=hf or openai"
        )
    check_model_dir(cfg.model.path, "model.path (--model)")
    device = device or _default_device()
    groups = load_eval_questions(
        data,
        format=cfg.data.format,
        world=cfg.data.world,
        sources=e.sources,
        limit_per_source=e.limit_per_source,
    )
    questions = [q for items in groups.values() for q in items]
    chunks = [questions[i : i + e.chunk_size] for i in range(0, len(questions), e.chunk_size)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    proxy = engine = None
    try:
        url, proxy = _search_url(cfg, out)
        health = _proxy_health(url)
        setting = eval_setting(
            cfg,
            data=data,
            questions_per_source={name: len(items) for name, items in groups.items()},
            n_samples=e.n_samples,
            limit_per_source=e.limit_per_source,
            search=search_setting(cfg, url, proxy is not None, health),
            device=device if cfg.rollout.engine == "hf" else None,
            beliefs=beliefs,
        )
        _check_or_write_setting(out / SETTING, setting, log)
        done = read_complete_chunks(
            out / ROLLOUTS, [[q.meta[QUESTION_KEY] for q in chunk] for chunk in chunks], e.n_samples
        )
        todo = [c for c in range(len(chunks)) if c not in done]
        log(
            f"eval: {len(questions)} questions in {len(groups)} sources ({', '.join(f'{k} {len(v)}' for k, v in groups.items())}), "
            f"{e.n_samples} sample(s) each, engine {cfg.rollout.engine}; {len(chunks) - len(todo)}/{len(chunks)} "
            f"chunks already in {out / ROLLOUTS}"
        )
        if todo:
            tokenizer = load_tokenizer(cfg.model.path)
            protocol = make_protocol(cfg.rollout, tokenizer, cfg.algorithm.answer_probe)
            engine = build_engine(cfg, tokenizer, protocol, device)
            belief_model = None
            if beliefs:
                belief_model = getattr(engine, "model", None) or load_causal_lm(
                    cfg.model.path, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code
                ).to(device)
            searcher = ProxySearcher.from_config(url, cfg.search)
            n_done = sum(len(chunks[c]) for c in done)
            t_loop = time.perf_counter()
            with (out / ROLLOUTS).open("a", encoding="utf-8") as f:
                for k, c in enumerate(todo):
                    trajs = generate_trajectories(
                        engine, tokenizer, protocol, searcher, chunks[c], cfg, seed=call_seed(e.seed, c, 0)
                    )
                    b = belief_scores(belief_model, tokenizer, trajs, cfg) if beliefs else None
                    rows = score_rows(trajs, b)
                    f.write(
                        "".join(
                            json.dumps(rollout_row(t, r, tokenizer, c)) + "\n"
                            for t, r in zip(trajs, rows, strict=True)
                        )
                    )
                    f.flush()
                    os.fsync(f.fileno())
                    n_done += len(chunks[c])
                    rate = sum(len(chunks[x]) for x in todo[: k + 1]) / (time.perf_counter() - t_loop)
                    eta = (len(questions) - n_done) / rate if rate > 0 else float("nan")
                    log(
                        f"eval: chunk {c + 1}/{len(chunks)}  {n_done}/{len(questions)} questions  "
                        f"chunk f1 {sum(r.f1 for r in rows) / len(rows):.3f}  {rate:.2f} questions/s  ETA {eta:.0f} s"
                    )
            searcher.close()
        all_rows = [row_from_json(d) for c in sorted(done) for d in done[c]] if done else []
        all_rows += _read_new_rows(out / ROLLOUTS, set(todo))
        scores = aggregate(_in_question_order(all_rows, questions, e.n_samples))
        setting["run"] = {"seconds_this_run": round(time.perf_counter() - t_start, 1)}
        (out / SCORES).write_text(json.dumps(scores.to_json(setting), indent=2) + "\n", encoding="utf-8")
        label = Path(cfg.model.path).name or str(cfg.model.path)
        (out / TABLE).write_text(table_markdown(scores, label=label), encoding="utf-8")
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            close()
        if proxy is not None:
            proxy.stop()
    log(
        f"eval: F1 {scores.avg.f1:.3f}  EM {scores.avg.em:.3f} (avg of {len(scores.sources)} sources, "
        f"{scores.avg.n} questions x {e.n_samples}) → {out / SCORES}, {out / ROLLOUTS}, {out / TABLE}"
    )
    return scores


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _search_url(cfg: Config, out: Path) -> tuple[str, Any]:
    """`search.url`, or a proxy started from `search.proxy` as `igpo train` starts it (log in out/)."""
    if cfg.search.url is not None:
        return cfg.search.url, None
    from services.search_proxy.launch import start_proxy

    proxy = start_proxy(cfg.search.proxy, port=0, log_file=out / "search_proxy.log")
    return proxy.url, proxy


def _proxy_health(url: str) -> dict[str, Any]:
    import httpx

    try:
        answer = httpx.get(f"{url.rstrip('/')}/healthz", timeout=10.0, trust_env=False)
        return answer.json() if answer.status_code == 200 else {}
    except (httpx.HTTPError, ValueError) as exc:
        raise ValueError(
            f"search.url={url!r} does not answer GET /healthz ({type(exc).__name__}); is the proxy up?"
        ) from None


def _check_or_write_setting(path: Path, setting: dict[str, Any], log: Callable[[str], None]) -> None:
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        diffs = setting_differences(old, setting)
        if diffs:
            raise ValueError(
                f"{path.parent} holds an evaluation with another setting; use another --out, or delete it. "
                "Differences:\n  " + "\n  ".join(diffs)
            )
        if old.get("project") != setting.get("project"):
            log(f"eval: note: continuing a run made at {old.get('project')}; now at {setting.get('project')}")
        return
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(setting, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_new_rows(path: Path, chunks: set[int]) -> list[EvalRow]:
    if not chunks:
        return []
    with path.open(encoding="utf-8") as f:
        return [row_from_json(d) for d in map(json.loads, f) if d["chunk"] in chunks]


def _in_question_order(rows: list[EvalRow], questions: list[PromptItem], n_samples: int) -> list[EvalRow]:
    order = {q.meta[QUESTION_KEY]: k for k, q in enumerate(questions)}
    rows = sorted(rows, key=lambda r: (order[r.question], r.sample))
    if len(rows) != len(questions) * n_samples:
        raise RuntimeError(f"expected {len(questions) * n_samples} rollouts, found {len(rows)}")
    return rows


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    """Evaluate a model as a search agent on held-out questions: scores per source, rollouts, setting."""
    ap = argparse.ArgumentParser(prog="igpo eval", description=main.__doc__)
    add_config_arguments(ap, required=True)
    ap.add_argument(
        "--data", nargs="+", metavar="FILE", help="question files or world:test (default: data.eval)"
    )
    ap.add_argument("--sources", nargs="+", metavar="SOURCE", help="only these sources (eval.sources)")
    ap.add_argument("--limit-per-source", type=int, metavar="N", help="first N questions of each source")
    ap.add_argument("--n-samples", type=int, metavar="K", help="rollouts per question (K > 1: avg@K, pass@K)")
    ap.add_argument("--model", metavar="DIR", help="model directory (model.path)")
    ap.add_argument(
        "--beliefs", action="store_true", help="add the belief in the gold answer per turn (log b_t)"
    )
    ap.add_argument(
        "--device", help="hf engine / belief model device (default: cuda when available, else cpu)"
    )
    ap.add_argument("--out", required=True, metavar="DIR", help="output directory (a rerun continues it)")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        for key, value in (
            ("model.path", args.model),
            ("eval.sources", args.sources),
            ("eval.limit_per_source", args.limit_per_source),
            ("eval.n_samples", args.n_samples),
        ):
            if value is not None:
                section, name = key.split(".")
                try:
                    setattr(getattr(cfg, section), name, value)
                except ValueError as exc:  # pydantic's ValidationError
                    raise ConfigError(
                        f"{key}={value!r} (from the command line): {exc.errors()[0]['msg']}"
                    ) from None
        run_eval(cfg, args.out, data=args.data, beliefs=args.beliefs, device=args.device)
    except (ConfigError, ValueError, EndpointError) as exc:
        print(f"igpo eval: {exc}", file=sys.stderr)
        if isinstance(exc, EndpointError):
            print(
                f"igpo eval: finished chunks are kept in {Path(args.out) / ROLLOUTS}; rerun to continue",
                file=sys.stderr,
            )
        return 2
    except KeyboardInterrupt:
        print(
            f"igpo eval: interrupted; finished chunks are kept in {Path(args.out) / ROLLOUTS}",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`igpo train -c CONFIG [--set key=value ...] [--resume]`: train a policy with IGPO, GRPO or PPO.

Also `python ray_jobs/train.py -c CONFIG` (what `ray job submit` runs). Ray: `resources.ray_address`, else
RAY_ADDRESS (set by `ray job submit`), else a local Ray started here. Search: `search.url`, else a proxy
subprocess started here with `search.proxy` settings (its log in run_dir/search_proxy.log).

Validation: with `eval.every_n_steps` > 0 and `data.eval` set, a fixed subset of `eval.subset_size` held-out
questions is evaluated at step 0, every N steps and at the end (`eval/...` metrics, checkpoints/best).

Before Ray starts, the search backend (search.url, or the proxy started here) must answer GET /healthz and
one query (search.failures.check_timeout_s each). During training a batch whose searches failed past
search.failures is not trained on; the trainer waits for the backend (search.failures.recovery_timeout_s).
Every wait on an actor has a deadline (train.timeouts).

Exit codes (a message on stderr, no traceback, for every code but 1; checkpoints are always kept):
  0  done
  1  anything else (traceback)
  2  bad input: config, dataset row, model path, command line, a run directory that does not fit the flags,
     or a search backend that fails its check at start-up (the URL and what failed are named)
  3  the run collapsed and train.on_collapse stopped it
  4  the search backend kept failing during training and did not recover in time; the last step trained
     is checkpointed: rerun with --resume once the backend is back
  5  an actor died (killed, out of memory, crashed); its role, index and what it was doing are named
  6  an actor call did not finish within its train.timeouts limit; the actor and the call are named
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from igpo_rlhf.config import Config, ConfigError, add_config_arguments, load_config, resolve_run_paths
from igpo_rlhf.rollout.trajectory import PromptItem

_SOURCE_ROOT = str(Path(__file__).resolve().parents[2])  # the checkout holding igpo_rlhf and services
_RUN_OUTPUTS = ("metrics.jsonl", "tensorboard", "rollouts", "eval_rollouts", "checkpoints", "config.yaml",
                "events.jsonl", "search_proxy.log")  # fmt: skip


@dataclass
class RunInputs:
    """The questions of a run: training prompts and the fixed validation subset (empty: no validation)."""

    prompts: list[PromptItem]
    eval_prompts: list[PromptItem]


def start_ray(cfg: Config) -> bool:
    """Connect to (or start) Ray; returns True when this process started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    address = cfg.resources.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return False
    # A local Ray: workers import igpo_rlhf and services from this checkout, with this process's env.
    path = os.pathsep.join(p for p in (_SOURCE_ROOT, os.environ.get("PYTHONPATH")) if p)
    ray.init(
        address="local",
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
        num_cpus=os.cpu_count(),
        num_gpus=cfg.resources.num_gpus,
    )
    return True


def joins_cluster(cfg: Config) -> bool:
    """Whether the driver joins a running Ray cluster (resources.ray_address, or RAY_ADDRESS as `ray job
    submit` sets it) instead of starting a local Ray."""
    return bool(cfg.resources.ray_address or os.environ.get("RAY_ADDRESS"))


def start_run_proxy(cfg: Config, *, log_file: Path) -> tuple[Any, Config]:
    """The search proxy of a run whose search.url is null, and the config its clients use.

    Every actor that searches must reach it. On a local Ray, or with rollout.engine=vllm (the agent loop runs
    in this driver), loopback does. When the driver joins a cluster with rollout.engine=hf, rollout actors may
    run on other nodes: the proxy then listens on this node's IP, and since it listens beyond loopback it
    requires a bearer token. The token is the value of search.proxy.auth.token_env when set, else generated
    here; this process gets it in its environment under the client's variable (search.token_env, set to the
    proxy's when null), and the rollout actors get it from the driver (HFRollouts), so no node needs it set.
    """
    import secrets

    from services.search_proxy.launch import start_proxy
    from services.search_proxy.settings import is_loopback

    settings = cfg.search.proxy
    if joins_cluster(cfg) and cfg.rollout.engine == "hf" and is_loopback(settings.host):
        settings = settings.model_copy(update={"host": ray.util.get_node_ip_address().strip("[]")})
    env: dict[str, str] = {}
    if settings.auth_required():
        token = os.environ.get(settings.auth.token_env) or secrets.token_urlsafe(32)
        env[settings.auth.token_env] = token
        client_var = cfg.search.token_env or settings.auth.token_env
        os.environ[client_var] = token
        if cfg.search.token_env is None:
            cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"token_env": client_var})})
    return start_proxy(settings, port=0, log_file=log_file, env=env), cfg


def check_gpu_setup(cfg: Config) -> None:
    """What a GPU run needs, checked before anything starts: vLLM importable for rollout.engine=vllm,
    flash_attn for model.attn_implementation=flash_attention_2, and every GPU's roles fitting its memory
    (`igpo plan`; resources.gpu_memory_gb, else this machine's first GPU, else 80 GB)."""
    from igpo_rlhf.models.loading import check_attention
    from igpo_rlhf.ray.memory_plan import startup_check

    if cfg.rollout.engine == "vllm":
        from igpo_rlhf.rollout.vllm_engine import require_vllm

        require_vllm()
    check_attention(cfg.model.attn_implementation)
    startup_check(cfg)


def prepare(cfg: Config, *, resume: bool = False) -> RunInputs:
    """Every check of the run's inputs, before anything starts: the engine (openai endpoints cannot be
    trained), the run directory (checkpoints there need --resume), the model directory, and the training
    and validation questions (a bad row is a ValueError naming file and row). `world:` entries render the
    built-in world first, before the proxy serves its corpus. (The config's cross-section constraints were
    checked when it was loaded.)"""
    from igpo_rlhf.data.datasets import load_questions
    from igpo_rlhf.models.loading import check_model_dir
    from igpo_rlhf.training.checkpoint import check_run_dir

    if cfg.rollout.engine == "openai":
        raise ConfigError(
            "rollout.engine=openai samples from an endpoint whose weights the trainer cannot update: it serves "
            "`igpo eval` only; train with rollout.engine=hf or vllm"
        )
    check_run_dir(cfg.logging.run_dir, resume=resume)
    check_model_dir(cfg.model.path)
    check_gpu_setup(cfg)
    prompts = load_questions(
        cfg.data.train, format=cfg.data.format, max_samples=cfg.data.max_train_samples, world=cfg.data.world
    )
    return RunInputs(prompts, validation_prompts(cfg))


def validation_prompts(cfg: Config) -> list[PromptItem]:
    """The fixed held-out subset validated during training (`data.eval`, `eval.subset_size`), or [] when
    validation is off (`eval.every_n_steps` = 0 or no `data.eval`)."""
    from igpo_rlhf.eval import load_eval_questions, validation_subset

    if cfg.eval.every_n_steps == 0 or not cfg.data.eval:
        return []
    groups = load_eval_questions(cfg.data.eval, format=cfg.data.format, world=cfg.data.world)
    questions = [q for items in groups.values() for q in items]
    return validation_subset(questions, cfg.eval.subset_size, cfg.eval.subset_seed)


def train(cfg: Config, inputs: RunInputs, *, resume: bool = False) -> list[dict[str, float]]:
    """Start the proxy (unless `search.url`), check the search backend (SearchUnavailable), start Ray (unless
    running), train; the metrics of the steps run."""
    from igpo_rlhf.ray.trainer import Trainer
    from igpo_rlhf.rollout.searcher import SearchUnavailable, check_search

    run_dir = Path(cfg.logging.run_dir)
    proxy: Any = None
    started_ray = False
    trainer = None
    try:
        url = cfg.search.url
        if url is None:
            run_dir.mkdir(parents=True, exist_ok=True)
            proxy, cfg = start_run_proxy(cfg, log_file=run_dir / "search_proxy.log")
            url = proxy.url
        try:  # before Ray and any actor: a dead backend is an error now, not hours of error observations
            check_search(url, cfg.search)
        except SearchUnavailable as exc:
            if proxy is None:
                raise
            raise SearchUnavailable(
                f"{exc} (the proxy started from search.proxy; its log: {proxy.log_file})"
            ) from None
        started_ray = start_ray(cfg)
        trainer = Trainer(cfg, inputs.prompts, url, resume=resume, eval_prompts=inputs.eval_prompts)
        return trainer.run()
    finally:
        if trainer is not None:
            trainer.close()
        if started_ray:
            ray.shutdown()
        if proxy is not None:
            proxy.stop()


def main(argv: list[str] | None = None) -> int:
    """Train a policy with IGPO, GRPO or PPO from a config file."""
    ap = argparse.ArgumentParser(prog="igpo train", description=main.__doc__)
    add_config_arguments(ap, required=True)
    ap.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    ap.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the run directory's metrics, checkpoints and rollouts first (a fresh run)",
    )
    args = ap.parse_args(argv)
    if args.resume and args.overwrite:
        print("igpo train: --resume and --overwrite exclude each other", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.overrides)
        # absolute paths for every actor; relative ones refused when joining a cluster (each key named)
        cfg = resolve_run_paths(cfg, cluster=joins_cluster(cfg))
        if args.overwrite:
            run_dir = Path(cfg.logging.run_dir)
            for name in _RUN_OUTPUTS:
                path = run_dir / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        inputs = prepare(cfg, resume=args.resume)
    except (ConfigError, ValueError) as exc:
        print(f"igpo train: {exc}", file=sys.stderr)
        return 2
    from igpo_rlhf.ray.trainer import SearchBackendDown, TrainingCollapsed
    from igpo_rlhf.ray.watch import ActorDied, ActorTimedOut
    from igpo_rlhf.rollout.searcher import SearchUnavailable

    try:
        train(cfg, inputs, resume=args.resume)
    except ConfigError as exc:  # found once the run directory is read (existing checkpoints, resume mismatch)
        print(f"igpo train: {exc}", file=sys.stderr)
        return 2
    except SearchUnavailable as exc:
        print(f"igpo train: {exc}. Ray and the actors were not started", file=sys.stderr)
        return 2
    except TrainingCollapsed as exc:
        print(f"igpo train: {exc}", file=sys.stderr)
        return 3
    except SearchBackendDown as exc:
        print(f"igpo train: {exc}", file=sys.stderr)
        return 4
    except (ActorDied, ActorTimedOut) as exc:
        print(f"igpo train: {exc}. The run stopped; {_last_checkpoint(cfg)}", file=sys.stderr)
        return 5 if isinstance(exc, ActorDied) else 6
    print(run_summary(cfg, len(inputs.eval_prompts)), flush=True)
    return 0


def run_summary(cfg: Config, n_eval: int) -> str:
    """The line a finished run ends with: where it is, and held-out F1 before and after on the `n_eval`
    validation questions (when validated)."""
    import json

    run_dir = Path(cfg.logging.run_dir)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x]
    evals = [(m["step"], m["eval/f1"]) for m in lines if m.get("eval/f1") is not None]
    text = f"igpo train: {cfg.train.steps} steps done → {run_dir} (metrics.jsonl, rollouts/, checkpoints/)"
    if len(evals) >= 2:
        (s0, f0), (s1, f1) = evals[0], evals[-1]
        best_step, best = max(evals, key=lambda e: (e[1], -e[0]))
        text += (
            f"\nheld-out F1 on {', '.join(cfg.data.eval)} ({n_eval} questions, "
            f"{'greedy' if cfg.eval.temperature == 0 else f'temperature {cfg.eval.temperature:g}'}): "
            f"{f0:.3f} at step {s0} → {f1:.3f} at step {s1} ({f1 - f0:+.3f}); best {best:.3f} at step "
            f"{best_step}: {run_dir / 'checkpoints' / 'best'}"
        )
    return text


def _last_checkpoint(cfg: Config) -> str:
    """Where a stopped run can continue from, in words."""
    from igpo_rlhf.training.checkpoint import CheckpointManager

    latest = CheckpointManager(cfg.logging.run_dir, keep_last=1).latest()
    if latest is None:
        return "no checkpoint was written yet"
    return f"the last checkpoint is {latest[1]} (step {latest[0]}): rerun with --resume to continue from it"


if __name__ == "__main__":
    sys.exit(main())

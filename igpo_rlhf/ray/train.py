"""`igpo train -c CONFIG [--set key=value ...] [--resume]`: train a policy with IGPO, GRPO or PPO.

Also `python ray_jobs/train.py -c CONFIG` (what `ray job submit` runs). Ray: `resources.ray_address`, else
RAY_ADDRESS (set by `ray job submit`), else a local Ray started here. Search: `search.url`, else a proxy
subprocess started here with `search.proxy` settings (its log in run_dir/search_proxy.log).

Exit codes: 0 done; 2 a bad config, dataset row, model path or command line, or a run directory that
does not fit the flags (message on stderr, no traceback); 1 anything else (traceback).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import ray

from igpo_rlhf.config import Config, ConfigError, load_config
from igpo_rlhf.rollout.trajectory import PromptItem

_SOURCE_ROOT = str(Path(__file__).resolve().parents[2])  # the checkout holding igpo_rlhf and services
_RUN_OUTPUTS = ("metrics.jsonl", "tensorboard", "rollouts", "checkpoints", "config.yaml", "search_proxy.log")


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


def prepare(cfg: Config, *, resume: bool = False) -> list[PromptItem]:
    """Every check of the run's inputs, before anything starts: the run directory (checkpoints there need
    --resume), the model directory, and the training questions (a bad row is a ValueError naming file and
    row). `world:` entries render the built-in world first, before the proxy serves its corpus. (The
    config's cross-section constraints were checked when it was loaded.)"""
    from igpo_rlhf.data.datasets import load_questions
    from igpo_rlhf.models.loading import check_model_dir
    from igpo_rlhf.training.checkpoint import check_run_dir

    check_run_dir(cfg.logging.run_dir, resume=resume)
    check_model_dir(cfg.model.path)
    return load_questions(
        cfg.data.train, format=cfg.data.format, max_samples=cfg.data.max_train_samples, world=cfg.data.world
    )


def train(cfg: Config, prompts: list[PromptItem], *, resume: bool = False) -> list[dict[str, float]]:
    """Start the proxy (unless `search.url`) and Ray (unless running), train; the metrics of the steps run."""
    from igpo_rlhf.ray.trainer import Trainer

    run_dir = Path(cfg.logging.run_dir)
    proxy: Any = None
    started_ray = False
    trainer = None
    try:
        url = cfg.search.url
        if url is None:
            from services.search_proxy.launch import start_proxy

            run_dir.mkdir(parents=True, exist_ok=True)
            proxy = start_proxy(cfg.search.proxy, port=0, log_file=run_dir / "search_proxy.log")
            url = proxy.url
        started_ray = start_ray(cfg)
        trainer = Trainer(cfg, prompts, url, resume=resume)
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
    ap.add_argument("-c", "--config", required=True, help="YAML config file (see configs/)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
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
        if args.overwrite:
            run_dir = Path(cfg.logging.run_dir)
            for name in _RUN_OUTPUTS:
                path = run_dir / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        prompts = prepare(cfg, resume=args.resume)
    except (ConfigError, ValueError) as exc:
        print(f"igpo train: {exc}", file=sys.stderr)
        return 2
    try:
        train(cfg, prompts, resume=args.resume)
    except ConfigError as exc:  # found once the run directory is read (existing checkpoints, resume mismatch)
        print(f"igpo train: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

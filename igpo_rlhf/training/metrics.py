"""Per-step metrics: what a step's rollouts, rewards and advantages say (`step_metrics`), and where they
go (`MetricsLogger`): one readable console line, a progress bar over the run, `run_dir/metrics.jsonl`
(one JSON object per step), TensorBoard (`run_dir/tensorboard`) and Weights & Biases when configured.

Metric names are `group/name` (reward/f1, ig/mean, policy/kl, time/rollout, ...), the same in every sink.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import numpy as np
import torch
from tqdm import tqdm

from igpo_rlhf.rollout.trajectory import FinishReason

if TYPE_CHECKING:
    from igpo_rlhf.config import LoggingConfig
    from igpo_rlhf.rollout.trajectory import Trajectory
    from igpo_rlhf.training.batch import Experience
    from igpo_rlhf.training.experience import Credit, Outcome

_TIMES = ("rollout", "search", "scoring", "reference", "critic", "update", "sync", "checkpoint")


def console_line(step: int, total: int, m: dict[str, float]) -> str:
    """`step 3/10 | reward +0.41 f1 0.41 em 0.30 fmt-fail 0.05 | IG +0.012±0.030 (62% >0) | turns 2.3 ...`

    A metric absent from `m` (or NaN) is left out."""

    def has(key: str) -> bool:
        return isinstance(m.get(key), (int, float)) and math.isfinite(m[key])

    def fmt(fields: list[tuple[str, str, str]]) -> str:
        return " ".join(f"{label} {spec.format(m[key])}" for key, label, spec in fields if has(key))

    parts = [
        f"step {step}/{total}",
        fmt([("reward/outcome", "reward", "{:+.3f}"), ("reward/f1", "f1", "{:.3f}"), ("reward/em", "em", "{:.2f}"),
             ("reward/format_fail", "fmt-fail", "{:.2f}")]),
    ]  # fmt: skip
    if has("ig/mean"):
        parts.append(
            f"IG {m['ig/mean']:+.4f}±{m.get('ig/std', float('nan')):.4f} ({m.get('ig/positive_frac', 0):.0%} >0)"
        )
    parts.append(
        fmt([("rollout/turns", "turns", "{:.2f}"), ("rollout/searches", "searches", "{:.2f}"),
             ("rollout/response_tokens", "resp-tok", "{:.0f}"), ("rollout/observation_tokens", "obs-tok", "{:.0f}")])
    )  # fmt: skip
    if has("rollout/search_error_rate") and m["rollout/search_error_rate"] > 0:
        parts.append(f"search-err {m['rollout/search_error_rate']:.0%}")
    if has("search/skipped_batches") and m["search/skipped_batches"] > 0:
        parts.append(
            f"skipped {m['search/skipped_batches']:.0f} batch(es), waited {m.get('search/wait_s', 0):.0f}s"
        )
    parts.append(
        fmt([("policy/kl", "kl", "{:.2e}"), ("policy/entropy", "ent", "{:.2f}"), ("policy/clip_frac", "clip", "{:.3f}"),
             ("critic/value_loss", "v-loss", "{:.3f}")])
    )  # fmt: skip
    times = " ".join(f"{t} {m[f'time/{t}']:.1f}" for t in _TIMES if has(f"time/{t}"))
    parts.append(f"{m.get('time/step', float('nan')):.1f}s ({times})")
    return " | ".join(p for p in parts if p)


class MetricsLogger:
    """Writes one step's metrics to every configured sink. `start_step`: the step a resumed run starts
    after; lines of later steps left in metrics.jsonl by the interrupted run are dropped."""

    def __init__(
        self,
        run_dir: str | Path,
        logging_cfg: LoggingConfig,
        *,
        total_steps: int,
        start_step: int,
        run_config: dict,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.total_steps = total_steps
        self.path = self.run_dir / "metrics.jsonl"
        self._truncate_after(start_step)
        self._file = self.path.open("a", encoding="utf-8")
        self._bar = (
            tqdm(
                total=total_steps,
                initial=start_step,
                desc="train",
                unit="step",
                file=sys.stderr,
                dynamic_ncols=True,
            )
            # a bar redrawn with carriage returns only garbles a log file or a `ray job logs` stream
            if logging_cfg.progress_bar and sys.stderr.isatty()
            else None
        )
        self._tb = None
        if logging_cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events of steps after the checkpoint that a killed run had written
            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step + 1)
        self._wandb = None
        if logging_cfg.wandb_project:
            try:
                import wandb
            except ImportError as err:
                raise ValueError(
                    f"logging.wandb_project={logging_cfg.wandb_project!r} needs the wandb package: pip install wandb"
                ) from err
            self._wandb = wandb.init(
                project=logging_cfg.wandb_project,
                name=logging_cfg.wandb_run_name or self.run_dir.name,
                config=run_config,
                resume="allow",
            )

    def _truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if line.strip() and json.loads(line).get("step", 0) <= step:
                kept.append(line)
        self.path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")

    def rewind(self, step: int, event: dict[str, Any]) -> None:
        """Forget the steps after `step` (a collapse rollback replays them): metrics.jsonl is cut after it,
        TensorBoard drops their events, and `event` is appended to run_dir/events.jsonl."""
        self._file.close()
        self._truncate_after(step)
        self._file = self.path.open("a", encoding="utf-8")
        if self._tb is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb.close()
            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=step + 1)
        if self._bar is not None:
            self._bar.n = step
            self._bar.refresh()
        append_event(self.run_dir, event)

    def log(self, step: int, metrics: dict[str, float]) -> str:
        """Record step `step`; returns the console line (also printed)."""
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(dict(metrics), step=step)
        line = console_line(step, self.total_steps, metrics)
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(f"reward {metrics.get('reward/outcome', float('nan')):+.3f}")
            tqdm.write(line, file=sys.stdout)
            sys.stdout.flush()  # the bar writes to stderr unbuffered; keep the two in order in a shared log
        else:
            print(line, flush=True)
        return line

    def close(self) -> None:
        self._file.close()
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def append_event(run_dir: str | Path, event: dict[str, Any]) -> None:
    """One JSON object (with an "event" key) appended to run_dir/events.jsonl: rollbacks, batches not
    trained on because their searches failed, the backend's recovery, a stop and why."""
    if "event" not in event:
        raise ValueError(f"an event needs an 'event' key naming it; got keys {sorted(event)}")
    with open(Path(run_dir) / "events.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({k: _plain(v) for k, v in event.items()}) + "\n")


def _plain(value: Any) -> Any:
    """JSON has no NaN/inf: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def step_metrics(
    trajectories: list[Trajectory],
    outcomes: list[Outcome],
    beliefs: list[list[float]] | None,
    credit: Credit,
    experiences: list[Experience],
    estimator: str,
) -> dict[str, float]:
    """Reward, information-gain, advantage and rollout statistics of one step.

    Two say whether a step can teach anything: `adv/zero_var_groups`, the share of groups whose outcome
    rewards are all equal (GRPO gives them zero advantage), and `rollout/distinct_frac`, the share of a
    group's rollouts whose token ids differ from every other's (a near-deterministic policy samples n
    copies of one trajectory).
    """
    m: dict[str, float] = {
        "reward/outcome": _mean([o.reward for o in outcomes]),
        "reward/f1": _mean([o.f1 for o in outcomes]),
        "reward/em": _mean([o.em for o in outcomes]),
        "reward/format_fail": _mean([0.0 if o.answered else 1.0 for o in outcomes]),
    }
    groups: dict[int, list[int]] = {}
    for i, t in enumerate(trajectories):
        groups.setdefault(t.group_id, []).append(i)
    m["adv/zero_var_groups"] = _mean(
        [1.0 if len({outcomes[i].reward for i in members}) == 1 else 0.0 for members in groups.values()]
    )
    m["rollout/distinct_frac"] = _mean(
        [
            len({tuple(trajectories[i].token_ids) for i in members}) / len(members)
            for members in groups.values()
        ]
    )
    if estimator == "igpo":
        ig = [r for row in credit.turn_rewards for r in row[:-1]]
        m["ig/mean"] = _mean(ig)
        m["ig/std"] = float(np.std(ig)) if ig else float("nan")
        m["ig/positive_frac"] = _mean([1.0 if r > 0 else 0.0 for r in ig])
        m["ig/count"] = float(len(ig))
        if beliefs is not None:
            m["belief/log_b_first"] = _mean([b[0] for b in beliefs])
            m["belief/log_b_last"] = _mean([b[-1] for b in beliefs])
    adv = torch.cat([e.advantages[e.action_mask] for e in experiences])
    if adv.numel():
        m["adv/mean"] = float(adv.mean())
        m["adv/std"] = float(adv.std(unbiased=False))
        m["adv/max"] = float(adv.max())
        m["adv/min"] = float(adv.min())
    obs_tokens = [sum(b - a for a, b in t.obs_spans) for t in trajectories]
    m.update(
        {
            "rollout/turns": _mean([t.num_turns for t in trajectories]),
            "rollout/searches": _mean([t.n_searches for t in trajectories]),
            "rollout/searched_frac": _mean([1.0 if t.n_searches > 0 else 0.0 for t in trajectories]),
            "rollout/search_errors": _mean([t.n_search_errors for t in trajectories]),
            "rollout/response_tokens": _mean([e.num_actions for e in experiences]),
            "rollout/observation_tokens": _mean(obs_tokens),
            "rollout/total_tokens": _mean([e.num_tokens for e in experiences]),
            "rollout/trajectories": float(len(trajectories)),
        }
    )
    for reason in get_args(FinishReason):
        m[f"rollout/finish_{reason}"] = _mean(
            [1.0 if t.finish_reason == reason else 0.0 for t in trajectories]
        )
    return m

"""Collapse detection from the per-step metrics (`train.on_collapse`, thresholds in `train.collapse`).

GRPO-family runs collapse: the policy drifts far from the reference, its entropy explodes or vanishes, and
the reward falls and does not come back. A collapse is declared when, at some step,

    held-out F1 (eval/f1, at each validation)        < its best so far - f1_drop
    training F1 (reward/f1, mean of the last window)  < its best such mean - f1_drop   (after min_steps)
    policy/kl                                         > kl_max
    policy/entropy                                    < entropy_min  or  > entropy_max

The trainer then stops, or rolls back to the last good checkpoint with a lower learning rate (trainer.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from igpo_rlhf.config import CollapseConfig


def _finite(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


@dataclass
class CollapseWatch:
    """The running bests the thresholds compare against; `check` returns why a step is a collapse, or None."""

    cfg: CollapseConfig
    best_eval_f1: float | None = None
    best_train_f1: float | None = None  # best mean of `window` consecutive steps
    train_f1: list[float] = field(default_factory=list)

    def check(self, step: int, metrics: dict[str, Any]) -> str | None:
        """Update the bests with this step's metrics; the reason if the step shows a collapse."""
        c = self.cfg
        reasons = []
        kl = _finite(metrics, "policy/kl")
        if c.kl_max is not None and kl is not None and kl > c.kl_max:
            reasons.append(f"policy/kl {kl:.3g} > train.collapse.kl_max {c.kl_max:g}")
        entropy = _finite(metrics, "policy/entropy")
        if entropy is not None and c.entropy_min is not None and entropy < c.entropy_min:
            reasons.append(f"policy/entropy {entropy:.3g} < train.collapse.entropy_min {c.entropy_min:g}")
        if entropy is not None and c.entropy_max is not None and entropy > c.entropy_max:
            reasons.append(f"policy/entropy {entropy:.3g} > train.collapse.entropy_max {c.entropy_max:g}")
        eval_f1 = _finite(metrics, "eval/f1")
        if eval_f1 is not None:
            if self.best_eval_f1 is not None and eval_f1 < self.best_eval_f1 - c.f1_drop:
                reasons.append(
                    f"held-out eval/f1 {eval_f1:.3f} fell more than train.collapse.f1_drop {c.f1_drop:g} below "
                    f"its best {self.best_eval_f1:.3f}"
                )
            self.best_eval_f1 = eval_f1 if self.best_eval_f1 is None else max(self.best_eval_f1, eval_f1)
        train_f1 = _finite(metrics, "reward/f1")
        if train_f1 is not None:
            self.train_f1.append(train_f1)
            del self.train_f1[: -c.window]
            if len(self.train_f1) == c.window and step >= c.min_steps:
                mean = sum(self.train_f1) / c.window
                if self.best_train_f1 is not None and mean < self.best_train_f1 - c.f1_drop:
                    reasons.append(
                        f"training reward/f1 over the last {c.window} steps {mean:.3f} fell more than "
                        f"train.collapse.f1_drop {c.f1_drop:g} below its best {self.best_train_f1:.3f}"
                    )
                self.best_train_f1 = mean if self.best_train_f1 is None else max(self.best_train_f1, mean)
        return "; ".join(reasons) or None

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_eval_f1": self.best_eval_f1,
            "best_train_f1": self.best_train_f1,
            "train_f1": self.train_f1,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_eval_f1 = state["best_eval_f1"]
        self.best_train_f1 = state["best_train_f1"]
        self.train_f1 = list(state["train_f1"])

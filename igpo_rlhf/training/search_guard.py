"""Whether a batch of rollouts may be trained on, given how many of its searches failed (`search.failures`),
and the wait for a failing backend to recover.

A failed search gives its rollout an error observation (agent_loop.py); a policy trained on many of those
learns from a broken environment. A batch is rejected — not trained on, the step not advanced — when

    errors / searches                          > max_error_rate            (this batch)
    Σ errors / Σ searches over the last W steps > max_window_error_rate     (W = window_steps, this batch
                                                                            included, once W steps ran)

The window holds only batches that were trained on, so the rejected batches of an outage do not keep it
high once the backend is back. After a rejection the trainer checks the backend with backoff (`backoff_s`,
doubled up to `max_backoff_s`) and rolls the same prompts out again once the check passes; when
`recovery_timeout_s` have passed since the first batch rejected (an accepted batch resets it), it stops.

    guard = SearchGuard(cfg.search.failures)
    verdict = guard.judge(trajectories)            # reason None: fine
    guard.reject(); recovery = guard.wait_for_backend(check, say, verdict.reason)
    skipped, waited_s = guard.accept(verdict)      # once a batch is used
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from igpo_rlhf.rollout.searcher import SearchUnavailable

if TYPE_CHECKING:
    from igpo_rlhf.config import SearchFailuresConfig
    from igpo_rlhf.rollout.trajectory import Trajectory


@dataclass(frozen=True)
class SearchVerdict:
    """A batch's search failures and whether it may be used (`reason` None) or why not."""

    errors: int
    searches: int
    window_errors: int  # over the window's batches and this one (this one alone without a window)
    window_searches: int
    reason: str | None

    @property
    def rate(self) -> float:
        return self.errors / self.searches if self.searches else 0.0

    @property
    def window_rate(self) -> float:
        return self.window_errors / self.window_searches if self.window_searches else 0.0


@dataclass(frozen=True)
class Recovery:
    """How a wait for the backend ended: `recovered`, after `waited_s`; `error`: the last check's failure."""

    recovered: bool
    waited_s: float
    error: str


class SearchGuard:
    """The search-failure limits of a run (`search.failures`) and its window of trained-on batches."""

    def __init__(self, cfg: SearchFailuresConfig) -> None:
        self.cfg = cfg
        self.window: deque[tuple[int, int]] = deque(maxlen=cfg.window_steps)  # (errors, searches) per batch
        self.bad_since: float | None = None  # monotonic time of the first batch rejected since the last used
        self.delay = cfg.backoff_s
        self.skipped = 0  # batches rejected since the last one used
        self.waited_s = 0.0

    def judge(self, trajectories: list[Trajectory], *, windowed: bool = True) -> SearchVerdict:
        """The verdict on a batch. `windowed=False` (validation rollouts): the batch's own rate only."""
        errors = sum(t.n_search_errors for t in trajectories)
        searches = sum(t.n_searches for t in trajectories)
        f = self.cfg
        past = list(self.window)[len(self.window) - (f.window_steps - 1) :] if windowed else []
        w_errors = errors + sum(e for e, _ in past)
        w_searches = searches + sum(s for _, s in past)
        window_full = windowed and len(past) + 1 >= f.window_steps
        reason = None
        if searches and errors / searches > f.max_error_rate:
            reason = (
                f"{errors} of {searches} searches failed ({errors / searches:.0%} > "
                f"search.failures.max_error_rate={f.max_error_rate:g})"
            )
        elif window_full and w_searches and w_errors / w_searches > f.max_window_error_rate:
            reason = (
                f"{w_errors} of {w_searches} searches of the last {f.window_steps} steps failed "
                f"({w_errors / w_searches:.0%} > search.failures.max_window_error_rate={f.max_window_error_rate:g})"
            )
        return SearchVerdict(errors, searches, w_errors, w_searches, reason)

    def reject(self) -> None:
        """Count a batch not used; the recovery clock starts at the first one since the last batch used."""
        if self.bad_since is None:
            self.bad_since = time.monotonic()
            self.delay = self.cfg.backoff_s
        self.skipped += 1

    def wait_for_backend(
        self, check: Callable[[], None], say: Callable[[str], None], reason: str
    ) -> Recovery:
        """Sleep with backoff and run `check` (raises SearchUnavailable while the backend fails) until it
        passes, or until `recovery_timeout_s` from the first rejected batch are used up (`reason`: why the
        batch was rejected, the error reported when no check ran). `say` gets one line per failed check."""
        f = self.cfg
        assert self.bad_since is not None, "reject() the batch first"
        deadline = self.bad_since + f.recovery_timeout_s
        t0 = time.monotonic()
        error = reason
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(self.delay, left))
            self.delay = min(self.delay * 2, f.max_backoff_s)
            try:
                check()
            except SearchUnavailable as exc:
                error = str(exc)
            else:
                self.waited_s += time.monotonic() - t0
                return Recovery(True, time.monotonic() - t0, error)
            left = deadline - time.monotonic()
            if left > 0:
                say(
                    f"{error}; next check in {min(self.delay, left):.0f} s (giving up in {left:.0f} s: "
                    f"search.failures.recovery_timeout_s={f.recovery_timeout_s:g})"
                )
        self.waited_s += time.monotonic() - t0
        return Recovery(False, time.monotonic() - t0, error)

    def accept(self, verdict: SearchVerdict, *, windowed: bool = True) -> tuple[int, float]:
        """A batch is used: it joins the window (unless `windowed=False`), the recovery clock stops. Returns
        (batches rejected, seconds waited) since the previous batch used."""
        if windowed:
            self.window.append((verdict.errors, verdict.searches))
        skipped, waited = self.skipped, self.waited_s
        self.bad_since, self.skipped, self.waited_s = None, 0, 0.0
        return skipped, waited

    def state_dict(self) -> dict[str, Any]:
        return {"window": list(self.window)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window = deque((tuple(x) for x in state["window"]), maxlen=self.cfg.window_steps)

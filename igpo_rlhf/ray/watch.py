"""Waiting on actors with a deadline, and naming the role of an actor that dies or hangs.

Every actor of a run is registered with its role and index (ActorGroup does it; `register` for others), so
a failure reads `rollout actor 0: generate for step 7 did not finish within 600 s` or `policy actor 1 died
during update for step 3` instead of a bare Ray error or a run that hangs:

    values = watch.get(refs, f"update for step {step}", timeout_s)   # ActorTimedOut / ActorDied
    with watch.naming(f"scoring for step {step}"):                     # a dead actor's error → ActorDied
        results = dispatched.gather(n)

`get` waits for the refs one at a time, so an actor that dies is reported at once, not when the slowest of
its group finishes (the surviving ranks of a DeepSpeed group would wait forever in a collective).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import ray
from ray.exceptions import OutOfMemoryError, RayActorError

_ROLES: dict[str, tuple[str, int]] = {}  # actor id (hex) → (role, index of the actor in its role)


def register(role: str, actors: Sequence[Any]) -> None:
    """Name `actors` (Ray actor handles) `<role> actor <k>` in failure messages."""
    for k, actor in enumerate(actors):
        _ROLES[actor._actor_id.hex()] = (role, k)


def forget(actors: Iterable[Any]) -> None:
    """Drop killed actors from the registry."""
    for actor in actors:
        _ROLES.pop(actor._actor_id.hex(), None)


def describe(actor_id: str | None) -> str:
    """`rollout actor 0` for a registered actor id (hex), else `actor <id prefix>`."""
    if actor_id in _ROLES:
        role, k = _ROLES[actor_id]
        return f"{role} actor {k}"
    return f"actor {actor_id[:12]}" if actor_id else "a Ray task"


class ActorFailed(RuntimeError):
    """An actor of the run died or did not answer in time. `actors`: e.g. ["rollout actor 0"]; `doing`:
    what was being waited for, e.g. "generate for step 7"."""

    def __init__(self, message: str, actors: list[str], doing: str) -> None:
        super().__init__(message)
        self.actors = actors
        self.doing = doing


class ActorDied(ActorFailed):
    """An actor's process died (killed, out of memory, crashed) while the run waited on it."""


class ActorTimedOut(ActorFailed):
    """A call did not finish within its timeout (train.timeouts)."""


def _cause(exc: BaseException) -> str:
    """Ray's one line on why the actor died (its messages run to a dozen lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    why = [line for line in lines if line.startswith("The actor is dead because")]
    return (why or lines or [type(exc).__name__])[0][:300]


def died(exc: RayActorError | OutOfMemoryError, doing: str, actor_id: str | None = None) -> ActorDied:
    """The ActorDied for a Ray actor error seen while waiting for `doing`."""
    actor_id = getattr(exc, "actor_id", None) or actor_id
    who = describe(actor_id)
    return ActorDied(f"{who} died during {doing}: {_cause(exc)}", [who], doing)


@contextmanager
def naming(doing: str) -> Iterator[None]:
    """Turns a dead actor's error raised inside the block into ActorDied naming its role."""
    try:
        yield
    except (RayActorError, OutOfMemoryError) as exc:
        raise died(exc, doing) from exc


def _actor_of(ref: ray.ObjectRef) -> str | None:
    actor_id = ref.task_id().actor_id()
    return None if actor_id.is_nil() else actor_id.hex()


def timed_out(pending: Sequence[ray.ObjectRef], doing: str, timeout_s: float, key: str) -> ActorTimedOut:
    """The ActorTimedOut naming the actors whose results in `pending` did not arrive; `key`: the config key
    that sets `timeout_s`."""
    who = sorted({describe(_actor_of(ref)) for ref in pending})
    return ActorTimedOut(
        f"{', '.join(who)}: {doing} did not finish within {timeout_s:g} s ({key}); the actor is stuck or "
        "far slower than expected",
        who,
        doing,
    )


def get(refs: Sequence[ray.ObjectRef], doing: str, timeout_s: float, key: str) -> list[Any]:
    """`ray.get(refs)` with a deadline: ActorTimedOut naming the actors still busy after `timeout_s` (`key`:
    the config key that sets it), ActorDied as soon as one of them dies. The values, in the order of refs."""
    index = {ref: i for i, ref in enumerate(refs)}
    values: list[Any] = [None] * len(refs)
    for ref, value in _arrivals(refs, doing, timeout_s, key):
        values[index[ref]] = value
    return values


def wait(refs: Sequence[ray.ObjectRef], doing: str, timeout_s: float, key: str) -> Iterator[ray.ObjectRef]:
    """Yields each ref as its result arrives, for callers that gather the values themselves (each finished
    ref is read here once, so a dead actor is reported at once); ActorTimedOut / ActorDied as `get`."""
    for ref, _ in _arrivals(refs, doing, timeout_s, key):
        yield ref


def _arrivals(
    refs: Sequence[ray.ObjectRef], doing: str, timeout_s: float, key: str
) -> Iterator[tuple[ray.ObjectRef, Any]]:
    """(ref, value) as each result arrives, read once; ActorTimedOut / ActorDied as `get`."""
    pending = list(refs)
    deadline = time.monotonic() + timeout_s
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            raise timed_out(pending, doing, timeout_s, key)
        try:
            value = ray.get(ready[0])
        except (RayActorError, OutOfMemoryError) as exc:
            raise died(exc, doing, _actor_of(ready[0])) from exc
        yield ready[0], value

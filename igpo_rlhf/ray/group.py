"""A role's actors and how work is spread across them (OpenRLHF's RayActorGroup, thinner).

`ActorGroup` creates the actors of one role on their placement (see placement.py), every actor class the
same way (a plain class made remote here), and dispatches:
- `call(method, ...)` / `call_async`: the same call on every actor (init, save, load, ...);
- `dispatch_async(method, lengths, per_item, ...)`: a list of items split across the actors with balanced
  token counts (OpenRLHF's `get_seqlen_balanced_partitions`), each actor getting its share; the returned
  `Dispatched` puts the actors' results back into item order.

Roles whose actors form one torch.distributed group (policy, critic: DeepSpeed data parallel) derive
from `DistributedActor`, which sets MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK per actor the way
`torch.distributed`'s env:// rendezvous reads them.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ray
from openrlhf.utils.seqlen_balancing import get_seqlen_balanced_partitions

from igpo_rlhf.ray import watch
from igpo_rlhf.ray.placement import RolePlacement


def free_port() -> int:
    """A TCP port that is free on this node right now."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


class DistributedActor:
    """Rank `rank` of a `world_size`-actor torch.distributed group; rank 0 picks the rendezvous address."""

    def __init__(self, world_size: int, rank: int, master_addr: str | None, master_port: int | None) -> None:
        self.world_size = world_size
        self.rank = rank
        self.master_addr = master_addr or ray.util.get_node_ip_address().strip("[]")
        self.master_port = master_port or free_port()
        os.environ["MASTER_ADDR"] = self.master_addr
        os.environ["MASTER_PORT"] = str(self.master_port)
        os.environ["WORLD_SIZE"] = str(world_size)
        os.environ["RANK"] = str(rank)
        # Ray sets CUDA_VISIBLE_DEVICES per actor, so each actor sees its one GPU as device 0.
        os.environ["LOCAL_RANK"] = "0"

    def master_address(self) -> tuple[str, int]:
        return self.master_addr, self.master_port


@dataclass
class Dispatched:
    """Work spread over a role's actors: the item indices each actor got, and its pending result."""

    parts: list[list[int]]  # parts[k]: indices of the items actor k got
    refs: list[ray.ObjectRef]  # refs[k]: actor k's result, a list with one entry per item of parts[k]

    def gather(self, n: int, per_item: Callable[[Any], list[Any]] = list) -> list[Any]:
        """The actors' results in item order (n items in all); `per_item` turns one actor's result into
        its list of per-item values (default: the result is that list)."""
        result: list[Any] = [None] * n
        for part, out in zip(self.parts, [per_item(r) for r in ray.get(self.refs)], strict=True):
            if len(out) != len(part):
                raise RuntimeError(f"an actor returned {len(out)} results for {len(part)} items")
            for i, value in zip(part, out, strict=True):
                result[i] = value
        return result


class ActorGroup:
    """The actors of one role, from a plain class (`ray.remote` is applied here). `distributed=True`: the
    class derives from DistributedActor and its constructor takes (world_size, rank, master_addr,
    master_port) before `init_args`. Its actors are registered with `watch` as `<role> actor <k>`, the name
    a failure message gives them."""

    def __init__(
        self,
        actor_cls: type,
        placement: RolePlacement,
        *,
        distributed: bool = False,
        init_args: Sequence[Any] = (),
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.role = placement.role
        remote_cls = ray.remote(actor_cls)
        kwargs = dict(init_kwargs or {})
        n = placement.num_actors
        self.actors: list[Any] = []
        if distributed:
            master = remote_cls.options(**placement.options(0)).remote(n, 0, None, None, *init_args, **kwargs)
            watch.register(self.role, [master])
            with watch.naming("start-up"):
                addr, port = ray.get(master.master_address.remote())
            self.actors = [master] + [
                remote_cls.options(**placement.options(k)).remote(n, k, addr, port, *init_args, **kwargs)
                for k in range(1, n)
            ]
        else:
            self.actors = [
                remote_cls.options(**placement.options(k)).remote(*init_args, **kwargs) for k in range(n)
            ]
        watch.register(self.role, self.actors)

    def __len__(self) -> int:
        return len(self.actors)

    def call_async(self, method: str, *args: Any, **kwargs: Any) -> list[ray.ObjectRef]:
        """The same call on every actor; the object refs, in actor order."""
        return [getattr(a, method).remote(*args, **kwargs) for a in self.actors]

    def call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """The same call on every actor; the results, in actor order."""
        return ray.get(self.call_async(method, *args, **kwargs))

    def partition(self, lengths: Sequence[int]) -> list[list[int]]:
        """Item indices per actor, token counts balanced; fewer parts than actors when items are few."""
        k = min(len(self.actors), len(lengths))
        if k == 0:
            return []
        if k == 1:
            return [list(range(len(lengths)))]
        return get_seqlen_balanced_partitions(list(lengths), k, equal_size=False)

    def dispatch_async(
        self, method: str, lengths: Sequence[int], per_item: dict[str, Sequence[Any]], **shared: Any
    ) -> Dispatched:
        """Split the items across the actors by token count and call `method` on each share.

        `per_item[name][i]` is item i's value of argument `name`; each actor gets the sub-lists of its
        items, plus the `shared` keyword arguments.
        """
        for name, values in per_item.items():
            if len(values) != len(lengths):
                raise ValueError(f"per_item[{name!r}] has {len(values)} entries for {len(lengths)} items")
        parts = self.partition(lengths)
        refs = [
            getattr(actor, method).remote(**{n: [v[i] for i in part] for n, v in per_item.items()}, **shared)
            for actor, part in zip(self.actors, parts, strict=False)
        ]
        return Dispatched(parts, refs)

    def kill(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        watch.forget(self.actors)
        self.actors = []

"""Where each role's actors run: one placement group per role, or one shared group when colocated.

`resources.<role>` gives the number of actors and the CPUs/GPUs of each. Every role gets a placement
group with one bundle per actor (strategy PACK), so a role's actors are reserved together or not at all.

GPUs. Two ranks of one DeepSpeed group (policy, critic) must never share a GPU (NCCL fails with "Duplicate
GPU detected"), but Ray packs fractional bundles onto the same GPU: two bundles of 0.4 GPU fit on one. So,
as OpenRLHF does, when a role has several ranks its GPU bundles are whole GPUs (ceil of the actor's
num_gpus) and each actor asks for its fraction inside its bundle:
- `resources.colocate`: the model roles (policy, reference, critic, scorer) share ONE placement group; bundle
  i holds actor i of every colocated role, which share its GPU through their fractional `num_gpus` (e.g.
  0.4 + 0.2 + 0.2); the fractions of one bundle must sum to at most 1. With several actors per role each
  bundle is one whole GPU.
- otherwise policy and critic bundles are whole GPUs when the role has several ranks; reference, scorer and
  hf-rollout actors (no collective between them) keep fractional bundles, so several may share a GPU.
A role of one actor (one rank) keeps its fraction in both cases: nothing can collide, and a single GPU can
then hold every role (bench/gpu_check.sh).
Every GPU actor gets PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (or the driver's own value): roles that
take turns on a GPU free cached memory between phases (`release_cached_gpu_memory`), and expandable segments
keep that memory from fragmenting.

On a CPU box, fractional `num_cpus` let a 2-core machine run every role (Ray's CPUs are logical; actors with
num_cpus < 1 get OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

if TYPE_CHECKING:
    from igpo_rlhf.config import ResourcesConfig, RoleResources

COLOCATED_ROLES = ("policy", "reference", "critic", "scorer")
ROLES = ("rollout", *COLOCATED_ROLES)
DISTRIBUTED_ROLES = ("policy", "critic")  # one torch.distributed group each: one GPU per rank
# Cached blocks of one phase can be reused by the next role on the GPU without fragmentation.
CUDA_ALLOC_CONF = "expandable_segments:True"


@dataclass(frozen=True)
class RolePlacement:
    """A role's actors: how many, each one's resources, and the placement-group bundle of each."""

    role: str
    num_actors: int
    num_cpus: float
    num_gpus: float
    group: PlacementGroup
    bundles: tuple[int, ...]  # bundle index of actor k

    def options(self, k: int) -> dict[str, Any]:
        """`ActorClass.options(...)` keyword arguments of actor k (GPU actors: the CUDA allocator setting)."""
        options: dict[str, Any] = {
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self.group, placement_group_bundle_index=self.bundles[k]
            ),
        }
        if self.num_gpus > 0:
            alloc_conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", CUDA_ALLOC_CONF)
            options["runtime_env"] = {"env_vars": {"PYTORCH_CUDA_ALLOC_CONF": alloc_conf}}
        return options


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    return {"CPU": cpus, "GPU": gpus} if gpus > 0 else {"CPU": cpus}


def _check_colocated_gpus(specs: dict[str, RoleResources], shared: list[str]) -> float:
    """The GPU fractions of one colocated bundle (actor i of each role); ValueError naming the keys when
    they exceed one GPU."""
    fractions = {r: specs[r].num_gpus for r in shared}
    total = sum(fractions.values())
    if total > 1.0 + 1e-9:
        keys = " + ".join(f"resources.{r}.num_gpus ({g:g})" for r, g in fractions.items())
        raise ValueError(
            f"resources.colocate=true puts actor i of {', '.join(shared)} on GPU i, so their fractions must sum "
            f"to at most 1: {keys} = {total:g}; lower them or set resources.colocate=false"
        )
    return total


def place_roles(
    resources: ResourcesConfig, roles: list[str], *, timeout_s: float = 120.0
) -> dict[str, RolePlacement]:
    """Create (and wait for) the placement groups of `roles`; returns each role's placement.

    ValueError naming the keys when colocated roles have different actor counts or GPU fractions over one
    GPU; TimeoutError naming what was requested when the cluster cannot hold it within `timeout_s`.
    """
    for role in roles:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; accepted: {', '.join(ROLES)}")
    specs: dict[str, RoleResources] = {role: getattr(resources, role) for role in roles}
    shared = [r for r in roles if resources.colocate and r in COLOCATED_ROLES]
    placements: dict[str, RolePlacement] = {}
    pending: list[tuple[PlacementGroup, str]] = []

    if shared:
        counts = {r: specs[r].num_actors for r in shared}
        if len(set(counts.values())) > 1:
            raise ValueError(
                "resources.colocate=true places actor i of every colocated role on bundle i, so "
                f"resources.<role>.num_actors must be equal for {', '.join(shared)}; got {counts}"
            )
        n = next(iter(counts.values()))
        gpus = _check_colocated_gpus(specs, shared)
        gpus = 1.0 if gpus > 0 and n > 1 else gpus  # several ranks: a whole GPU per bundle
        bundle = _bundle(sum(specs[r].num_cpus for r in shared), gpus)
        group = placement_group([dict(bundle) for _ in range(n)], strategy="PACK")
        pending.append((group, f"colocated {'+'.join(shared)}: {n} x {bundle}"))
        for r in shared:
            placements[r] = RolePlacement(r, n, specs[r].num_cpus, specs[r].num_gpus, group, tuple(range(n)))

    for r in roles:
        if r in placements:
            continue
        spec = specs[r]
        ranks = r in DISTRIBUTED_ROLES and spec.num_actors > 1
        gpus = math.ceil(spec.num_gpus) if ranks else spec.num_gpus  # two ranks never share a GPU
        bundle = _bundle(spec.num_cpus, gpus)
        group = placement_group([dict(bundle) for _ in range(spec.num_actors)], strategy="PACK")
        pending.append((group, f"{r}: {spec.num_actors} x {bundle}"))
        placements[r] = RolePlacement(
            r, spec.num_actors, spec.num_cpus, spec.num_gpus, group, tuple(range(spec.num_actors))
        )

    try:
        for group, what in pending:
            wait_ready(group, what, timeout_s, "lower resources.<role>.num_cpus / num_gpus / num_actors")
    except TimeoutError:
        release(placements)
        raise
    return placements


def wait_ready(group: PlacementGroup, what: str, timeout_s: float, remedy: str) -> None:
    """Wait for `group` to be placed; TimeoutError naming `what` was asked, what is free, and the `remedy`."""
    try:
        ray.get(group.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError as err:
        raise TimeoutError(
            f"the Ray cluster cannot reserve {what} within {timeout_s:.0f}s "
            f"(available: {ray.available_resources()}); {remedy}"
        ) from err


def release(placements: dict[str, RolePlacement]) -> None:
    """Remove the placement groups (once each; colocated roles share one), freeing their resources."""
    seen = set()
    for p in placements.values():
        if p.group.id not in seen:
            seen.add(p.group.id)
            remove_placement_group(p.group)


def release_cached_gpu_memory() -> None:
    """Hand the CUDA caching allocator's unused blocks back to the driver, so that the next role on a shared
    GPU (resources.colocate) can use them; a no-op without CUDA. The colocated actors call it after their phase."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()

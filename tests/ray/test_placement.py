"""Placement of GPU roles on a real local Ray that declares 4 GPUs (logical: Ray assigns GPU ids and sets
CUDA_VISIBLE_DEVICES without a driver, which is exactly what decides which device each actor opens).

- Colocated roles whose fractions sum to <= 0.5: with fractional bundles Ray packs two bundles onto one GPU
  (shown here with the bundles the old code made), putting two DeepSpeed ranks on one device; whole-GPU
  bundles give every policy rank its own GPU and actor i of every colocated role the GPU of rank i.
- A distributed role with a fractional GPU each gets a GPU per rank; a scorer keeps fractional sharing.
- GPU actors get PYTORCH_CUDA_ALLOC_CONF (CPU actors nothing); fractions over one GPU per colocated bundle
  are a config error.
"""

from __future__ import annotations

import os

import pytest
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from igpo_rlhf.config import load_config
from igpo_rlhf.ray.placement import CUDA_ALLOC_CONF, place_roles, release
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def gpu_ray():
    if ray.is_initialized():  # the suite's CPU-only local Ray (tests/conftest.py): this module needs GPUs
        ray.shutdown()
    ray.init(address="local", num_cpus=2, num_gpus=4, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # fmt: skip
    yield
    ray.shutdown()


@ray.remote
class Probe:
    def device(self) -> tuple[list, str | None, str | None]:
        """The GPU ids Ray gave this actor, its CUDA_VISIBLE_DEVICES and PYTORCH_CUDA_ALLOC_CONF."""
        env = os.environ
        return ray.get_gpu_ids(), env.get("CUDA_VISIBLE_DEVICES"), env.get("PYTORCH_CUDA_ALLOC_CONF")


def devices(placement) -> list[tuple[list, str | None, str | None]]:
    actors = [Probe.options(**placement.options(k)).remote() for k in range(placement.num_actors)]
    try:
        return ray.get([a.device.remote() for a in actors])
    finally:
        for a in actors:
            ray.kill(a)


def resources(*overrides: str):
    return load_config(None, [*overrides, *[f"resources.{r}.num_cpus=0.1" for r in ("policy", "reference", "scorer", "critic")]]).resources  # fmt: skip


def test_fractional_bundles_would_put_two_ranks_on_one_gpu(gpu_ray):
    """The fault, reproduced: two bundles of 0.4 GPU (what colocating 0.2 + 0.1 + 0.1 used to reserve)."""
    group = placement_group([{"CPU": 0.2, "GPU": 0.4}] * 2, strategy="PACK")
    ray.get(group.ready(), timeout=60)
    try:
        actors = [Probe.options(num_cpus=0.1, num_gpus=0.2, scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=group, placement_group_bundle_index=k)).remote() for k in range(2)]  # fmt: skip
        [(gpus_0, _, _), (gpus_1, _, _)] = ray.get([a.device.remote() for a in actors])
        assert gpus_0 == gpus_1  # both "ranks" would open the same device
    finally:
        remove_placement_group(group)


def test_colocated_ranks_get_their_own_gpu_and_share_it_with_their_partners(gpu_ray):
    cfg = resources("resources.colocate=true", "resources.policy.num_gpus=0.2", "resources.reference.num_gpus=0.1",
                    "resources.scorer.num_gpus=0.1", *[f"resources.{r}.num_actors=2" for r in ("policy", "reference", "scorer")])  # fmt: skip
    placements = place_roles(cfg, ["policy", "reference", "scorer"], timeout_s=60)
    try:
        bundles = ray.util.placement_group_table(placements["policy"].group)["bundles"]
        assert [b["GPU"] for b in bundles.values()] == [1.0, 1.0]  # whole GPUs
        policy, reference, scorer = (devices(placements[r]) for r in ("policy", "reference", "scorer"))
        assert policy[0][0] != policy[1][0]  # one GPU per rank
        for k in range(2):
            assert reference[k][0] == scorer[k][0] == policy[k][0]  # actor k of every role on rank k's GPU
            assert policy[k][1] == str(policy[k][0][0])
        assert {d[2] for d in policy + reference + scorer} == {
            os.environ.get("PYTORCH_CUDA_ALLOC_CONF", CUDA_ALLOC_CONF)
        }
    finally:
        release(placements)


def test_a_distributed_role_takes_a_gpu_per_rank_and_a_scorer_may_share(gpu_ray):
    cfg = resources("resources.policy.num_actors=2", "resources.policy.num_gpus=0.5",
                    "resources.scorer.num_actors=2", "resources.scorer.num_gpus=0.5")  # fmt: skip
    placements = place_roles(cfg, ["policy", "scorer"], timeout_s=60)
    try:
        policy, scorer = devices(placements["policy"]), devices(placements["scorer"])
        assert policy[0][0] != policy[1][0]
        assert scorer[0][0] == scorer[1][0]  # 2 x 0.5: packed onto one GPU, as asked
        table = ray.util.placement_group_table
        assert [b["GPU"] for b in table(placements["policy"].group)["bundles"].values()] == [1.0, 1.0]
        assert [b["GPU"] for b in table(placements["scorer"].group)["bundles"].values()] == [0.5, 0.5]
    finally:
        release(placements)
    cpu_only = place_roles(resources(), ["policy"], timeout_s=60)
    try:
        assert "runtime_env" not in cpu_only["policy"].options(0)
        assert devices(cpu_only["policy"])[0][0] == []
    finally:
        release(cpu_only)


def test_colocated_fractions_over_one_gpu_are_refused(gpu_ray):
    cfg = resources(
        "resources.colocate=true", "resources.policy.num_gpus=0.6", "resources.scorer.num_gpus=0.6"
    )
    with pytest.raises(
        ValueError, match=r"resources.policy.num_gpus \(0.6\) \+ resources.scorer.num_gpus \(0.6\) = 1.2"
    ):
        place_roles(cfg, ["policy", "scorer"])


def test_a_single_rank_keeps_its_fraction_so_one_gpu_holds_every_role(gpu_ray):
    cfg = resources("resources.colocate=true", "resources.policy.num_gpus=0.3", "resources.reference.num_gpus=0.2",
                    "resources.scorer.num_gpus=0.2", "resources.rollout.num_gpus=0.3", "resources.rollout.num_cpus=0.1")  # fmt: skip
    placements = place_roles(cfg, ["rollout", "policy", "reference", "scorer"], timeout_s=60)
    try:
        table = ray.util.placement_group_table
        assert [b["GPU"] for b in table(placements["policy"].group)["bundles"].values()] == [
            pytest.approx(0.7)
        ]
        assert [b["GPU"] for b in table(placements["rollout"].group)["bundles"].values()] == [0.3]
        on = {r: devices(placements[r])[0][0] for r in ("rollout", "policy", "reference", "scorer")}
        assert on["policy"] == on["reference"] == on["scorer"]
    finally:
        release(placements)

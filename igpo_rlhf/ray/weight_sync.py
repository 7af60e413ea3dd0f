"""θ_old from the policy's rank 0 to the belief scorers over a collective, instead of the Ray object store.

On CPU (and in every test of the trainer) the scorers get the policy's state dict through the object store:
rank 0 gathers the weights to CPU memory and each scorer copies them in. At paper scale that is a 7B state
dict (15 GB in bfloat16) serialised and copied every step, so on GPUs the weights go the way the vLLM engines
get theirs: a broadcast from rank 0, parameter by parameter, over a process group of rank 0 and the scorers.

The group is built from a TCPStore with torch's own backends (`ProcessGroupNCCL` on GPUs, `ProcessGroupGloo`
for the CPU test of the mechanism), outside the policy's DeepSpeed default group, so no process joins a
second default group: rank 0 of the weight group is the policy's rank 0, ranks 1..n are the scorer actors.
Each scorer receives straight into its own parameters (no second copy of the model); the parameter lists
of both sides are compared once, when the group is made.

The NCCL path needs CUDA and has not run on our CPU machines; the gloo path runs in
tests/ray/test_weight_sync.py with the real PolicyActor (DeepSpeed ZeRO-2 and ZeRO-3) and BeliefScorerActor.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

BACKENDS = ("nccl", "gloo")


@dataclass(frozen=True)
class ParamSpec:
    """One parameter as it is sent: its Hugging Face name, full shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str


def param_specs(model: nn.Module) -> list[ParamSpec]:
    """The model's parameters in the order they are sent (tied weights once), with their full shapes (also
    for ZeRO-3-partitioned parameters, whose local tensors are empty)."""
    specs = []
    for name, param in model.named_parameters():
        shape = tuple(getattr(param, "ds_shape", param.shape))
        specs.append(ParamSpec(name, tuple(int(n) for n in shape), str(param.dtype).removeprefix("torch.")))
    return specs


def check_same_parameters(sender: list[ParamSpec], receiver: list[ParamSpec], who: str) -> None:
    """ValueError naming the first parameter where the two lists differ (name, shape or dtype)."""
    for k, (a, b) in enumerate(zip(sender, receiver, strict=False)):
        if a != b:
            raise ValueError(
                f"{who} cannot receive the policy's weights: parameter {k} is {b} there but the policy sends {a} "
                "(model.path and model.dtype must give the same architecture and dtype to both)"
            )
    if len(sender) != len(receiver):
        raise ValueError(f"{who} has {len(receiver)} parameters; the policy sends {len(sender)}")


def join_weight_group(
    address: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float = 600.0
) -> dist.ProcessGroup:
    """This process's member of the weight group (rank 0 hosts the store at address:port). Every member must
    call it at the same time: the group forms when all have joined."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; accepted: {', '.join(BACKENDS)}")
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(address, port, world_size, is_master=rank == 0, timeout=timeout)
    store = dist.PrefixStore("igpo_weight_sync", store)
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world_size, timeout)
    return dist.ProcessGroupNCCL(store, rank, world_size)  # needs a CUDA build of torch


def broadcast_from_rank_0(group: dist.ProcessGroup, tensor: torch.Tensor) -> None:
    """Rank 0 sends `tensor`; every other member receives into its `tensor` (same shape and dtype)."""
    options = dist.BroadcastOptions()
    options.rootRank = 0
    group.broadcast([tensor], options).wait()


def scorer_transport(policy_gpus: float, scorer_gpus: float) -> str:
    """How θ_old reaches the scorers: "nccl" (broadcast) when the policy and the scorers are on GPUs, else
    "object_store" (the policy's state dict; every CPU run)."""
    return "nccl" if policy_gpus > 0 and scorer_gpus > 0 else "object_store"

"""Our thin DeepSpeed setup for the trained roles (policy, critic), on GPUs (nccl) and on CPU (gloo).

OpenRLHF's `DeepspeedStrategy` (openrlhf.utils.deepspeed) imports flash_attn when imported, so it cannot
be imported on a CPU machine; this is our own minimal equivalent, for exactly what we need:
- `torch.distributed` over the actors of the role (env:// rendezvous set by `DistributedActor`; gloo on
  CPU, nccl on GPU), DeepSpeed ZeRO stage 0-3 from `train.zero_stage`;
- the optimizer is a torch AdamW *object* (a DeepSpeed-config optimizer would compile fused_adam);
  with `train.offload` (GPU runs) DeepSpeed's CPUAdam, which ZeRO-Offload requires;
- the update loop: for each optimiser step, micro-batches with gradient accumulation, each micro-batch
  loss weighted so the step's loss is the exact token (or sequence) mean of the whole mini-batch over
  every rank (batch.loss_weight);
- checkpoints with DeepSpeed's own save_checkpoint/load_checkpoint (weights, optimizer, scheduler) plus
  this actor's RNG states.

On CPU, DeepSpeed's first init compiles a shared-memory comm op with g++ (30-40 s on an idle machine,
minutes on a loaded one), cached in TORCH_EXTENSIONS_DIR.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from igpo_rlhf.ray.group import DistributedActor
from igpo_rlhf.ray.placement import release_cached_gpu_memory
from igpo_rlhf.training.batch import MiniBatch, PaddedBatch, loss_weight, micro_batches, pad_experiences
from igpo_rlhf.training.checkpoint import capture_rng, restore_rng

if TYPE_CHECKING:
    from igpo_rlhf.config import TrainConfig


def deepspeed_config(
    *,
    zero_stage: int,
    micro_batch_size: int,
    grad_accum: int,
    grad_clip: float,
    dtype: str,
    offload: bool,
) -> dict[str, Any]:
    """The DeepSpeed config dict of a trained role (no optimizer/scheduler section: we pass objects)."""
    zero: dict[str, Any] = {"stage": zero_stage}
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16", "initial_scale_power": 16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the learning rate after `s` optimiser steps (torch LambdaLR)."""
    total = max(total_steps, 1)

    def factor(s: int) -> float:
        if schedule != "constant" and s < warmup_steps:
            return (s + 1) / (warmup_steps + 1)
        if schedule in ("constant", "constant_with_warmup"):
            return 1.0
        progress = min(1.0, (s - warmup_steps) / max(total - warmup_steps, 1))
        if schedule == "linear":
            return 1.0 - progress
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        raise ValueError(
            f"lr_scheduler={schedule!r}; accepted: constant, constant_with_warmup, cosine, linear"
        )

    return factor


def training_device() -> torch.device:
    """This actor's device: its GPU when Ray gave it one, else the CPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(0)
        return torch.device("cuda", 0)
    return torch.device("cpu")


class DeepSpeedActor(DistributedActor):
    """One rank of a DeepSpeed data-parallel role. Subclasses build the model and the micro-batch loss."""

    engine: Any = None
    agg: str = "token_mean"
    colocated: bool = False  # resources.colocate: free cached GPU memory after each phase for the other roles

    def _init_engine(
        self,
        build_model: Callable[[], torch.nn.Module],
        *,
        lr: float,
        train_cfg: TrainConfig,
        dtype: str,
        grad_accum: int,
        total_optimizer_steps: int,
    ) -> None:
        """init torch.distributed + DeepSpeed around the model `build_model()` returns (called here, so that
        under ZeRO-3 `from_pretrained` partitions the weights as it loads them)."""
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        self.device = training_device()
        deepspeed.init_distributed(dist_backend="nccl" if self.device.type == "cuda" else "gloo")
        self.grad_accum = grad_accum
        self.zero_stage = train_cfg.zero_stage
        ds_cfg = deepspeed_config(
            zero_stage=train_cfg.zero_stage,
            micro_batch_size=train_cfg.micro_batch_size,
            grad_accum=grad_accum,
            grad_clip=train_cfg.grad_clip,
            dtype=dtype,
            offload=train_cfg.offload,
        )
        # HfDeepSpeedConfig must be alive while from_pretrained runs for ZeRO-3's partitioned loading.
        self._hf_ds_config = HfDeepSpeedConfig(ds_cfg) if train_cfg.zero_stage == 3 else None
        model = build_model()
        params = [p for p in model.parameters() if p.requires_grad]
        kwargs = {"lr": lr, "betas": tuple(train_cfg.adam_betas), "weight_decay": train_cfg.weight_decay}
        if train_cfg.offload:
            from deepspeed.ops.adam import DeepSpeedCPUAdam  # ZeRO-Offload steps the optimizer on the CPU

            optimizer = DeepSpeedCPUAdam(params, **kwargs)
        else:
            optimizer = torch.optim.AdamW(params, **kwargs)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(train_cfg.lr_scheduler, train_cfg.warmup_steps, total_optimizer_steps)
        )
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg
        )
        self.engine.train()

    # ------------------------------------------------------------------------------------------ update
    def _micro_loss(self, batch: PaddedBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The micro-batch's loss, aggregated with `self.agg` over its own tokens, and its stats."""
        raise NotImplementedError

    def update(self, minibatches: list[MiniBatch]) -> dict[str, float]:
        """One optimiser step per MiniBatch (this rank's share), in order; every rank makes the same calls.

        Returns stats averaged over this rank's micro-batches weighted by action tokens, plus the
        `action_tokens` they cover, `grad_norm` (mean over optimiser steps) and `lr`.
        """
        sums: dict[str, float] = {}
        tokens = 0
        grad_norms = []
        for batch in minibatches:
            micros = micro_batches(batch.experiences, self.engine.train_micro_batch_size_per_gpu())
            if len(micros) != self.grad_accum:
                raise ValueError(
                    f"rank {self.rank} got {len(batch.experiences)} rollouts = {len(micros)} micro-batches for "
                    f"one optimiser step; DeepSpeed was set up for {self.grad_accum}"
                )
            for micro in micros:
                loss, stats = self._micro_loss(pad_experiences(micro).to(self.device))
                weight = loss_weight(micro, batch, self.agg, self.grad_accum, self.world_size)
                self.engine.backward(loss * weight)
                self.engine.step()
                n = sum(e.num_actions for e in micro)
                tokens += n
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value * n
            norm = self.engine.get_global_grad_norm()
            if norm is not None:
                grad_norms.append(float(norm))
        out = {key: value / max(tokens, 1) for key, value in sums.items()}
        out["action_tokens"] = float(tokens)
        out["grad_norm"] = float(np.mean(grad_norms)) if grad_norms else float("nan")
        out["lr"] = float(self.scheduler.get_last_lr()[0])
        if self.colocated:
            release_cached_gpu_memory()
        return out

    # ------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, path: str) -> None:
        """DeepSpeed checkpoint (weights, optimizer, scheduler) under `path/ds`, plus this rank's RNG states
        in `path/rng_rank{r}.pt`. Collective: every rank calls it with the same path (a filesystem all
        ranks share)."""
        self.engine.save_checkpoint(path, tag="ds", save_latest=False)
        torch.save(capture_rng(), os.path.join(path, f"rng_rank{self.rank}.pt"))

    def set_base_lr(self, lr: float) -> float:
        """Set the schedule's base learning rate to `lr` (the rate now follows lr x schedule(step)); after a
        collapse rollback the trainer lowers it. Returns the learning rate in effect now."""
        self.scheduler.base_lrs = [float(lr) for _ in self.scheduler.base_lrs]
        for group, base, factor in zip(
            self.scheduler.optimizer.param_groups,
            self.scheduler.base_lrs,
            self.scheduler.lr_lambdas,
            strict=True,
        ):
            group["lr"] = base * factor(self.scheduler.last_epoch)
        self.scheduler._last_lr = [g["lr"] for g in self.scheduler.optimizer.param_groups]
        return float(self.scheduler.get_last_lr()[0])

    def load_checkpoint(self, path: str) -> None:
        """Inverse of save_checkpoint (collective)."""
        load_path, _ = self.engine.load_checkpoint(path, tag="ds")
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {os.path.join(path, 'ds')}")
        restore_rng(torch.load(os.path.join(path, f"rng_rank{self.rank}.pt"), weights_only=False))

"""PolicyActor: one DeepSpeed data-parallel rank of the policy π_θ.

Its update minimises, per optimiser step (DESIGN.md "Loss"):

    L = policy_loss(log π_θ, log π_θold, Â, mask)            PPO clipped surrogate (+ optional entropy bonus)
      + kl_coef · masked_aggregate(KL_k3(π_θ || π_ref), mask)  KL to the frozen reference

with θ_old's log-probs from the belief scorer's pass and the reference's from the ReferenceActor. After
every update, rank 0 hands the full weights to the rollout and scorer actors: through the Ray object
store (`state_dict_for_sync`) on CPU and for HF rollout actors, by NCCL broadcast into vLLM engines
(`broadcast_to_vllm`) and into the belief scorers (`broadcast_to_scorers`, igpo_rlhf/ray/weight_sync.py)
on GPUs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ray
import torch

from igpo_rlhf.algo import kl_penalty, masked_aggregate, policy_loss
from igpo_rlhf.models.loading import load_causal_lm
from igpo_rlhf.ray.deepspeed_actor import DeepSpeedActor
from igpo_rlhf.ray.weight_sync import ParamSpec, broadcast_from_rank_0, join_weight_group, param_specs
from igpo_rlhf.training.batch import PaddedBatch
from igpo_rlhf.training.logprobs import action_log_probs

if TYPE_CHECKING:
    from igpo_rlhf.config import Config


class PolicyActor(DeepSpeedActor):
    """Rank `rank` of the policy's DeepSpeed group (created by ActorGroup(..., distributed=True))."""

    def init_model(self, cfg: Config, *, grad_accum: int, total_optimizer_steps: int) -> int:
        """Load `cfg.model.path` and set up DeepSpeed; collective over the group. Returns the parameter count."""
        torch.manual_seed(cfg.train.seed)
        algo = cfg.algorithm
        self.agg = algo.loss_agg
        self.temperature = cfg.rollout.temperature
        self.clip_eps_low, self.clip_eps_high = algo.clip_eps_low, algo.clip_eps_high
        self.dual_clip = algo.dual_clip
        self.kl_coef, self.kl_estimator = algo.kl_coef, algo.kl_estimator
        self.entropy_coef = algo.entropy_coef
        self.logits_chunk = cfg.train.logits_chunk
        self.colocated = cfg.resources.colocate
        self._vllm_group: Any = None
        self._scorer_group: Any = None

        def build() -> torch.nn.Module:
            model = load_causal_lm(
                cfg.model.path,
                dtype=cfg.model.dtype,
                attn_implementation=cfg.model.attn_implementation,
                trust_remote_code=cfg.model.trust_remote_code,
            )
            if cfg.model.gradient_checkpointing:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
            return model

        self._init_engine(
            build,
            lr=cfg.train.lr,
            train_cfg=cfg.train,
            dtype=cfg.model.dtype,
            grad_accum=grad_accum,
            total_optimizer_steps=total_optimizer_steps,
        )
        return sum(
            p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in self.engine.module.parameters()
        )

    def _micro_loss(self, batch: PaddedBatch) -> tuple[torch.Tensor, dict[str, float]]:
        # Through the DeepSpeed engine (its backward hooks sit on the outputs), asking the model for its final
        # hidden states and the logits of one position only: log-probs are then projected from the hidden
        # states at action positions, train.logits_chunk rows at a time (no [B, L, V] logits, see
        # training/logprobs.py). The entropy comes from the same chunks: a bonus when entropy_coef > 0, else
        # a metric without gradient.
        out = self.engine(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            use_cache=False,
            output_hidden_states=True,
            logits_to_keep=1,
        )
        scored = action_log_probs(
            self.engine.module.get_output_embeddings(),
            out.hidden_states[-1],  # [B, L, H] after the final norm
            batch.input_ids,
            batch.action_mask,
            temperature=self.temperature,
            logits_chunk=self.logits_chunk,
            entropy="grad" if self.entropy_coef > 0 else "metric",
        )
        log_probs, entropy = scored.log_probs, scored.entropy  # [B, L] each
        mask = batch.action_mask
        loss, stats = policy_loss(
            log_probs,
            batch.old_log_probs,
            batch.advantages,
            mask,
            clip_eps_low=self.clip_eps_low,
            clip_eps_high=self.clip_eps_high,
            dual_clip=self.dual_clip,
            agg=self.agg,
            entropy=entropy,
            entropy_coef=self.entropy_coef,
        )
        stats["pg_loss"] = float(loss.detach())
        if batch.ref_log_probs is not None:
            kl = kl_penalty(
                log_probs, batch.ref_log_probs, kl_estimator=self.kl_estimator, mask=mask
            )  # [B, L]
            kl_loss = masked_aggregate(kl, mask, self.agg)
            stats["kl"] = float(kl_loss.detach())
            if self.kl_coef > 0:
                loss = loss + self.kl_coef * kl_loss
        stats["loss"] = float(loss.detach())
        return loss, stats

    # ------------------------------------------------------------------------------------ weight sync
    def _gathered(self, params: list[torch.nn.Parameter]) -> Any:
        """Context in which ZeRO-3-partitioned params hold their full data (collective; no-op otherwise)."""
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, enabled=self.zero_stage == 3)

    def state_dict_for_sync(self) -> dict[str, torch.Tensor] | None:
        """Full weights as CPU tensors on rank 0 (None on the others), keyed like `model.state_dict()`.

        Collective under ZeRO-3 (every rank gathers each parameter in turn). The driver passes rank 0's
        object ref straight to the rollout and scorer actors' `update_weights`, so the weights go
        through the object store without ever being fetched by the driver.
        """
        model = self.engine.module
        params = dict(model.named_parameters(remove_duplicate=False))
        buffers = dict(model.named_buffers())
        out: dict[str, torch.Tensor] = {}
        for name in model.state_dict():
            if name in params:
                with self._gathered([params[name]]):
                    if self.rank == 0:
                        out[name] = params[name].detach().to("cpu", copy=True)
            elif self.rank == 0:
                out[name] = buffers[name].detach().to("cpu", copy=True)
        return out if self.rank == 0 else None

    def export_hf(self, path: str, tokenizer_dir: str) -> None:
        """The current weights as a standard Hugging Face directory at `path` (safetensors, config, generation
        config, and the tokenizer of `tokenizer_dir`): what `from_pretrained` and `igpo eval --model` load.
        Collective under ZeRO-3 (every rank gathers); rank 0 writes."""
        state_dict = self.state_dict_for_sync()
        if self.rank == 0:
            from igpo_rlhf.models.loading import load_tokenizer

            config = self.engine.module.config
            config.use_cache = True  # off for training; a saved model generates with its KV cache
            try:
                self.engine.module.save_pretrained(path, state_dict=state_dict, safe_serialization=True)
            finally:
                config.use_cache = False
            load_tokenizer(tokenizer_dir).save_pretrained(path)

    def weight_group_address(self) -> tuple[str, int]:
        """(node IP, free port) where rank 0 hosts the scorers' weight group (call on rank 0)."""
        from igpo_rlhf.ray.group import free_port

        return ray.util.get_node_ip_address().strip("[]"), free_port()

    def join_scorer_group(self, address: str, port: int, world_size: int, backend: str) -> list[ParamSpec]:
        """Rank 0 joins the weight group as its rank 0 (with the scorers as 1..world_size-1; they join at the
        same time) and returns what it will send; other ranks return []."""
        if self.rank != 0:
            return []
        self._scorer_group = join_weight_group(address, port, 0, world_size, backend)
        return param_specs(self.engine.module)

    def broadcast_to_scorers(self) -> int:
        """Every parameter from rank 0 to the scorers of the weight group, in `param_specs` order (collective:
        under ZeRO-3 every rank gathers each parameter in turn). Returns the tensors sent (0 on ranks > 0)."""
        sent = 0
        for _, param in self.engine.module.named_parameters():
            with self._gathered([param]):
                if self.rank == 0:
                    broadcast_from_rank_0(self._scorer_group, param.data.contiguous())
                    sent += 1
        return sent

    def broadcast_to_vllm(self, engines: list[Any], tensor_parallel_size: int, backend: str = "nccl") -> int:
        """NCCL broadcast of every parameter from rank 0 into the vLLM engines (GPU runs; collective).

        Through igpo_rlhf.rollout.vllm_engine's `init_weight_sync` (once) and `broadcast_weights`, which
        wrap OpenRLHF's engine-side receivers; tensors go in bfloat16, the engines' dtype. Under ZeRO-3
        every rank gathers each parameter in turn and rank 0 sends it; otherwise rank 0 sends all at
        once. Cannot run on a CPU machine. Returns the tensors sent (0 on ranks > 0).
        """
        from igpo_rlhf.rollout import vllm_engine

        if self.rank == 0 and self._vllm_group is None:
            self._vllm_group = vllm_engine.init_weight_sync(
                engines, tensor_parallel_size=tensor_parallel_size, backend=backend
            )
        params = list(self.engine.module.named_parameters())
        if self.zero_stage != 3:
            if self.rank != 0:
                return 0
            tensors = ((name, p.data.to(torch.bfloat16)) for name, p in params)
            return vllm_engine.broadcast_weights(engines, self._vllm_group, tensors)
        sent = 0
        for name, param in params:
            with self._gathered([param]):
                if self.rank == 0:
                    tensor = param.data.to(torch.bfloat16)
                    sent += vllm_engine.broadcast_weights(engines, self._vllm_group, [(name, tensor)])
        return sent

"""CriticActor: the value model V(s_j) of the PPO baseline (estimator=ppo), one DeepSpeed rank.

`ValueModel` = the policy's transformer backbone (AutoModel, no LM head) + a linear value head. Values are
token-aligned like log-probs: values[b, j] = V(state in which token j is chosen) = head(h_{j-1}), the
hidden state after reading tok_<j; position 0 is 0. Trained with the clipped value loss on GAE returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from igpo_rlhf.algo import value_loss
from igpo_rlhf.models.loading import load_backbone
from igpo_rlhf.ray.deepspeed_actor import DeepSpeedActor
from igpo_rlhf.ray.placement import release_cached_gpu_memory
from igpo_rlhf.scoring.plan import batches_within_budget
from igpo_rlhf.training.batch import PaddedBatch
from igpo_rlhf.training.logprobs import pad_right

if TYPE_CHECKING:
    from igpo_rlhf.config import Config, ModelConfig


class ValueModel(nn.Module):
    """Backbone + value head; `forward` returns values [B, L] aligned with the tokens."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        # A fresh head outputs V = 0 everywhere: GAE then starts from the plain discounted return.
        self.value_head = nn.Linear(hidden, 1, bias=False, dtype=next(backbone.parameters()).dtype)
        nn.init.zeros_(self.value_head.weight)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        v = self.value_head(hidden.last_hidden_state).squeeze(-1).float()  # [B, L]: V after reading tok_<=j
        return torch.cat(
            [torch.zeros_like(v[:, :1]), v[:, :-1]], dim=1
        )  # shift: values[b, j] = head(h_{j-1})


def load_value_model(path: str, model_cfg: ModelConfig) -> ValueModel:
    """The backbone of the checkpoint at `path` with a fresh (zero) value head."""
    backbone = load_backbone(
        path,
        dtype=model_cfg.dtype,
        attn_implementation=model_cfg.attn_implementation,
        trust_remote_code=model_cfg.trust_remote_code,
    )
    return ValueModel(backbone)


class CriticActor(DeepSpeedActor):
    """Rank `rank` of the critic's DeepSpeed group."""

    def init_model(self, cfg: Config, *, grad_accum: int, total_optimizer_steps: int) -> None:
        """Load the backbone (`model.critic_path`, default `model.path`) with a fresh head; collective."""
        torch.manual_seed(cfg.train.seed)
        self.agg = cfg.algorithm.loss_agg
        self.value_clip = cfg.algorithm.value_clip
        self.token_budget = cfg.scorer.token_budget
        self.colocated = cfg.resources.colocate

        def build() -> torch.nn.Module:
            model = load_value_model(cfg.model.critic_path or cfg.model.path, cfg.model)
            if cfg.model.gradient_checkpointing:
                model.backbone.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
            return model

        self._init_engine(
            build,
            lr=cfg.train.critic_lr,
            train_cfg=cfg.train,
            dtype=cfg.model.dtype,
            grad_accum=grad_accum,
            total_optimizer_steps=total_optimizer_steps,
        )

    @torch.no_grad()
    def values(self, sequences: list[list[int]], num_forwards: int = 0) -> list[torch.Tensor]:
        """V(s_j) of every sequence before the update, each [L_i] float32 on the CPU (position 0: 0).

        `num_forwards`: run at least this many forward passes (one-token dummies after the real ones).
        Under ZeRO-3 a forward gathers parameters collectively, so every rank must run as many as the
        busiest one; the driver passes that count (`forward_count` of each rank's share).
        """
        out: list[torch.Tensor | None] = [None] * len(sequences)
        batches = batches_within_budget([len(s) for s in sequences], self.token_budget)
        for rows in batches:
            ids = pad_right([torch.tensor(sequences[i], dtype=torch.long) for i in rows], 0)  # [B, L]
            attn = pad_right([torch.ones(len(sequences[i]), dtype=torch.long) for i in rows], 0)
            v = self.engine(ids.to(self.device), attn.to(self.device)).cpu()  # [B, L]
            for b, i in enumerate(rows):
                out[i] = v[b, : len(sequences[i])].clone()
        one = torch.ones(1, 1, dtype=torch.long, device=self.device)
        for _ in range(num_forwards - len(batches)):
            self.engine(one, one)
        if self.colocated:
            release_cached_gpu_memory()
        return out  # type: ignore[return-value]

    def _micro_loss(self, batch: PaddedBatch) -> tuple[torch.Tensor, dict[str, float]]:
        values = self.engine(batch.input_ids, batch.attention_mask)  # [B, L]
        loss, stats = value_loss(
            values,
            batch.old_values,
            batch.returns,
            batch.action_mask,
            clip_eps=self.value_clip,
            agg=self.agg,
        )
        stats["value_loss"] = float(loss.detach())
        return loss, stats


def forward_count(lengths: list[int], token_budget: int) -> int:
    """Forward passes `CriticActor.values` runs over sequences of these lengths."""
    return len(batches_within_budget(lengths, token_budget))

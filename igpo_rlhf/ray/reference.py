"""ReferenceActor: the frozen reference policy π_ref, giving log π_ref(tok_j | tok_<j) for the KL term.

A plain transformers model in eval mode under inference mode (no DeepSpeed: it never trains, and one bf16
copy of a 3B/7B model fits on one GPU). Its log-probs come from the belief scorer's trajectory pass
(`score_token_log_probs`): only at action positions (the KL is masked to them), projecting hidden states to
the vocabulary `scorer.logits_chunk` rows at a time within `scorer.token_budget` tokens per pass, so no
[B, L, V] logits tensor is ever built. Colocated (resources.colocate), it frees its cached GPU memory after
each pass for the roles that share its GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from igpo_rlhf.models.loading import load_causal_lm
from igpo_rlhf.ray.deepspeed_actor import training_device
from igpo_rlhf.ray.placement import release_cached_gpu_memory
from igpo_rlhf.scoring import score_token_log_probs

if TYPE_CHECKING:
    from igpo_rlhf.config import Config


class ReferenceActor:
    """Holds π_ref (`model.ref_path`, default the initial policy `model.path`), attention through sdpa."""

    def __init__(self, cfg: Config) -> None:
        torch.manual_seed(cfg.train.seed)
        self.device = training_device()
        self.model = load_causal_lm(
            cfg.model.ref_path or cfg.model.path,
            dtype=cfg.model.dtype,
            trust_remote_code=cfg.model.trust_remote_code,
        ).to(self.device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.temperature = cfg.rollout.temperature
        self.token_budget = cfg.scorer.token_budget
        self.logits_chunk = cfg.scorer.logits_chunk
        self.colocated = cfg.resources.colocate

    def log_probs(
        self, sequences: list[list[int]], action_masks: Sequence[Sequence[int]] | None = None
    ) -> list[torch.Tensor]:
        """log π_ref(tok_j | tok_<j) of every sequence, each [L_i] float32 on the CPU (position 0, and
        positions outside `action_masks` when given: 0)."""
        log_probs = score_token_log_probs(
            self.model,
            sequences,
            action_masks=action_masks,
            temperature=self.temperature,
            token_budget=self.token_budget,
            logits_chunk=self.logits_chunk,
        )
        if self.colocated:
            release_cached_gpu_memory()
        return log_probs

    def ready(self) -> bool:
        """True once constructed (the model is loaded)."""
        return True

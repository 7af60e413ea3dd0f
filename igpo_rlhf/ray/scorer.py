"""BeliefScorerActor: a copy of θ_old that scores beliefs and old log-probs, synced from the policy each step.

Weights arrive either as the policy's state dict through the Ray object store (`update_weights`: CPU runs), or
by broadcast from the policy's rank 0 straight into the parameters (`join_weight_group` once, then
`receive_weights`: GPU runs, NCCL; see igpo_rlhf/ray/weight_sync.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from igpo_rlhf.models.loading import load_causal_lm, load_weights_in_place
from igpo_rlhf.ray.placement import release_cached_gpu_memory
from igpo_rlhf.ray.weight_sync import ParamSpec, broadcast_from_rank_0, join_weight_group, param_specs
from igpo_rlhf.scoring import ScoreResult, score_trajectories
from igpo_rlhf.scoring.budget import DEFAULT_LOGITS_CHUNK, DEFAULT_TOKEN_BUDGET
from igpo_rlhf.scoring.inputs import TokenIds


class BeliefScorerActor:
    """Holds θ_old (a causal LM in HF format, attention through sdpa) and scores batches of trajectories.

    Made a Ray actor by `ActorGroup` (or `ray.remote(BeliefScorerActor)`); the trainer calls
    `update_weights` with the policy's state dict after each update.
    """

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        token_budget: int = DEFAULT_TOKEN_BUDGET,
        logits_chunk: int = DEFAULT_LOGITS_CHUNK,
        trust_remote_code: bool = False,
        release_memory: bool = False,
    ) -> None:
        """`release_memory`: free cached GPU memory after each `score` (colocated roles share the GPU)."""
        model = load_causal_lm(
            model_path, dtype=dtype, attn_implementation="sdpa", trust_remote_code=trust_remote_code
        )
        self._model = model.to(device)
        self._token_budget = token_budget
        self._logits_chunk = logits_chunk
        self._version = 0  # the weights as loaded from model_path
        self._release_memory = release_memory
        self._weight_group = None

    def score(
        self,
        sequences: Sequence[TokenIds],
        belief_points: Sequence[Sequence[int]],
        probe_ids: TokenIds,
        answers: Sequence[Sequence[TokenIds]] | None,
        action_masks: Sequence[TokenIds] | None = None,
        alias_reduce: str = "max",
        temperature: float = 1.0,
    ) -> ScoreResult:
        """Beliefs log b_{i,t} and old token log-probs under the current θ_old (see `score_trajectories`)."""
        result = score_trajectories(
            self._model,
            sequences,
            belief_points,
            probe_ids,
            answers,
            action_masks=action_masks,
            alias_reduce=alias_reduce,
            temperature=temperature,
            token_budget=self._token_budget,
            logits_chunk=self._logits_chunk,
        )
        if self._release_memory:
            release_cached_gpu_memory()
        return result

    def update_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> int:
        """Loads new θ_old in place (all-or-nothing, see `load_weights_in_place`) and returns `version`.

        On CPU (and GPU without NCCL) the policy's rank 0 returns its state dict as a Ray object and the
        trainer passes its ObjectRef to every scorer; Ray resolves it before this call.
        """
        if isinstance(version, bool) or not isinstance(version, int):
            raise ValueError(f"version={version!r} must be an integer")
        load_weights_in_place(self._model, state_dict.items())
        self._version = version
        return version

    def join_weight_group(
        self, address: str, port: int, rank: int, world_size: int, backend: str
    ) -> list[ParamSpec]:
        """Joins the policy's weight group as `rank` (the policy's rank 0 joins as 0 at the same time); returns
        the parameters it will receive, for the driver to compare with what the policy sends."""
        self._weight_group = join_weight_group(address, port, rank, world_size, backend)
        return param_specs(self._model)

    def receive_weights(self, version: int) -> int:
        """Receives every parameter from the policy's rank 0 in place (while it runs `broadcast_to_scorers`);
        returns `version`. An interrupted broadcast leaves the weights part new, part old: a failed step."""
        if self._weight_group is None:
            raise RuntimeError("receive_weights before join_weight_group")
        with torch.no_grad():
            for param in self._model.parameters():
                broadcast_from_rank_0(self._weight_group, param.data)
        self._version = int(version)
        return self._version

    def weights_version(self) -> int:
        """The version passed to the last successful `update_weights` (0: the weights of model_path)."""
        return self._version

"""BeliefScorerActor: a copy of θ_old that scores beliefs and old log-probs, synced from the policy each step."""

from collections.abc import Iterable, Mapping, Sequence

import ray
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from igpo_rlhf.scoring import ScoreResult, score_trajectories
from igpo_rlhf.scoring.inputs import TokenIds
from igpo_rlhf.scoring.scorer import DEFAULT_LOGITS_CHUNK, DEFAULT_TOKEN_BUDGET

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@ray.remote
class BeliefScorerActor:
    """Holds θ_old (a causal LM in HF format, attention through sdpa) and scores batches of trajectories.

    A Ray actor class: start it with `BeliefScorerActor.options(num_gpus=1).remote(model_path, device="cuda")`
    (or without options on CPU). The policy group calls `update_weights` after each update.
    """

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        token_budget: int = DEFAULT_TOKEN_BUDGET,
        logits_chunk: int = DEFAULT_LOGITS_CHUNK,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}")
        model = AutoModelForCausalLM.from_pretrained(
            model_path, attn_implementation="sdpa", dtype=DTYPES[dtype]
        )
        self._model = model.to(device).eval()
        self._token_budget = token_budget
        self._logits_chunk = logits_chunk
        self._version = 0  # the weights as loaded from model_path

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
        return score_trajectories(
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

    def update_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> int:
        """Loads new θ_old in place and returns `version`.

        Ray object store path (CPU, and GPU without NCCL): the policy group puts its state dict once with
        `ray.put` and passes the ObjectRef to every scorer; Ray resolves it before this call. Names are HF
        parameter names as in `model.state_dict()`. A GPU path may later receive each tensor by an NCCL broadcast
        and hand it to `load_weights_in_place` in the same way.
        """
        if isinstance(version, bool) or not isinstance(version, int):
            raise ValueError(f"version={version!r} must be an integer")
        load_weights_in_place(self._model, state_dict.items())
        self._version = version
        return version

    def weights_version(self) -> int:
        """The version passed to the last successful `update_weights` (0: the weights of model_path)."""
        return self._version


def load_weights_in_place(model: PreTrainedModel, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Copies tensors into the model's parameters and buffers by HF name, casting to their dtype and device.

    Every parameter must be given (tied weights once under either name), no unknown name and every shape must
    match; all of it is checked before anything is copied, so a bad update leaves the model unchanged.
    """
    targets = model.state_dict(keep_vars=True)  # name -> the model's own Parameter / buffer
    given = dict(named_tensors)
    unknown = sorted(set(given) - set(targets))
    if unknown:
        raise ValueError(f"update has {len(unknown)} names the model does not have, e.g. {unknown[:3]}")
    covered = {id(targets[name]) for name in given}  # a tied weight is one Parameter under two names
    missing = sorted(name for name, param in model.named_parameters() if id(param) not in covered)
    if missing:
        raise ValueError(f"update lacks {len(missing)} of the model's parameters, e.g. {missing[:3]}")
    for name, tensor in given.items():
        if tuple(tensor.shape) != tuple(targets[name].shape):
            raise ValueError(
                f"update has {name} with shape {tuple(tensor.shape)}, the model's is {tuple(targets[name].shape)}"
            )
    with torch.no_grad():
        for name, tensor in given.items():
            targets[name].copy_(tensor)

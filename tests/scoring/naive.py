"""The slow obvious scorer the tests compare against: one plain forward pass per belief point and alias."""

import torch
from transformers import PreTrainedModel


@torch.no_grad()
def naive_belief(model: PreTrainedModel, ids: list[int], p: int, probe: list[int], alias: list[int]) -> float:
    """log b = (1/A) Σ_j log π(a_j | ids[:p], probe, a_<j): one forward over ids[:p] + probe + alias."""
    context = ids[:p] + probe
    log_probs = model(torch.tensor([context + alias])).logits[0].float().log_softmax(-1)  # [len, V]
    # the logits at position len(context) - 1 + j predict alias[j]
    return sum(log_probs[len(context) - 1 + j, alias[j]].item() for j in range(len(alias))) / len(alias)


def naive_beliefs(
    model: PreTrainedModel,
    sequences: list[list[int]],
    belief_points: list[list[int]],
    probe: list[int],
    answers: list[list[list[int]]],
    alias_reduce: str = "max",
) -> list[list[float]]:
    """Per trajectory and point: the best alias's log b ("max") or the first alias's ("first")."""
    out = []
    for ids, points, aliases in zip(sequences, belief_points, answers, strict=True):
        scored = aliases if alias_reduce == "max" else aliases[:1]
        out.append([max(naive_belief(model, ids, p, probe, a) for a in scored) for p in points])
    return out


@torch.no_grad()
def naive_token_log_probs(
    model: PreTrainedModel, ids: list[int], temperature: float = 1.0, action_mask: list[int] | None = None
) -> torch.Tensor:
    """[len(ids)] entry j = log softmax(logits_{j-1} / temperature)[ids[j]] from one plain forward; 0 at j = 0
    and where action_mask is 0."""
    logits = model(torch.tensor([ids])).logits[0].float() / temperature  # [len, V]
    log_probs = logits.log_softmax(-1)
    out = torch.zeros(len(ids))
    for j in range(1, len(ids)):
        if action_mask is None or action_mask[j]:
            out[j] = log_probs[j - 1, ids[j]]
    return out

"""The belief b_{i,t}: the policy's own probability of the gold answer after turn t (DESIGN.md "Belief").

    log b_{i,t} = (1/L) · Σ_j log π_θold(a_j | c_{i,t}, probe, a_<j)      (mean token log-prob)
    b_{i,t}     = exp(log b_{i,t})                                      (geometric-mean probability)

With several gold aliases, log b_{i,t} is the best alias's (`max`, ours) or the first alias's (`first`,
the paper's code). The token log-probs come from the belief scorer (igpo_rlhf.scoring), which computes
all of them for a trajectory in one pass; these two functions are the reduction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from igpo_rlhf.algo._checks import check_option

ALIAS_REDUCTIONS = ("first", "max")


def log_belief(answer_log_probs: Sequence[float] | torch.Tensor) -> float:
    """log b_{i,t} for one gold alias a = (a_1..a_L): the mean of log π(a_j | c_{i,t}, probe, a_<j) over j."""
    values = torch.as_tensor(answer_log_probs, dtype=torch.float64).flatten()
    if values.numel() == 0:
        raise ValueError("answer_log_probs is empty: an alias has at least one token")
    return float(values.mean())


def reduce_aliases(alias_log_beliefs: Sequence[float], alias_reduce: str = "max") -> float:
    """log b_{i,t} over the gold aliases: the highest alias's (`max`) or the first alias's (`first`)."""
    check_option("alias_reduce", alias_reduce, ALIAS_REDUCTIONS)
    if len(alias_log_beliefs) == 0:
        raise ValueError("alias_log_beliefs is empty: give log b of at least one gold alias")
    return float(alias_log_beliefs[0]) if alias_reduce == "first" else float(max(alias_log_beliefs))

"""Information-gain turn rewards r_{i,t} from the beliefs b_{i,t} (IGPO, DESIGN.md "Turn rewards")."""

from __future__ import annotations

import math
from collections.abc import Sequence

from igpo_rlhf.algo._checks import check_finite_floats, check_option

IG_KINDS = ("prob_diff", "log_prob_diff")

# A belief log b is a mean of token log-probs, so it is <= 0; this slack admits float round-off only.
_LOG_PROB_SLACK = 1e-4


def info_gain_rewards(belief_logprobs: Sequence[float], kind: str = "prob_diff") -> list[float]:
    """IG rewards r_{i,t} for the non-final turns t = 1..T-1 of one rollout.

    Input: [log b_{i,0}, ..., log b_{i,T-1}], where log b_{i,t} is the mean token log-prob of the
    gold answer given the context after turn t (t = 0: the prompt alone). Output (length T-1):

        kind="prob_diff"      r_{i,t} = b_{i,t} - b_{i,t-1},  b = exp(log b)   (the paper's formula)
        kind="log_prob_diff"  r_{i,t} = log b_{i,t} - log b_{i,t-1}

    A rollout that answers on its first turn has one belief (the prompt's) and no IG reward.
    """
    check_option("kind", kind, IG_KINDS)
    if len(belief_logprobs) == 0:
        raise ValueError("belief_logprobs is empty; it needs log b_0 (the prompt's belief) at least")
    log_b = check_finite_floats("belief_logprobs", belief_logprobs)
    for t, value in enumerate(log_b):
        if value > _LOG_PROB_SLACK:
            raise ValueError(f"belief_logprobs[{t}]={value} > 0; a mean token log-probability is <= 0")
    if kind == "prob_diff":
        b = [math.exp(v) for v in log_b]
        return [b[t] - b[t - 1] for t in range(1, len(b))]
    return [log_b[t] - log_b[t - 1] for t in range(1, len(log_b))]

"""The agent's final answer and the outcome reward r_{i,T_i} (DESIGN.md "Turn rewards")."""

from __future__ import annotations

import math
import re

from igpo_rlhf.rewards.qa import Golds, cover_exact_match, exact_match, f1_score, split_golds

METRICS = {"f1": f1_score, "em": exact_match, "cover_em": cover_exact_match}

_ANSWER_TAG = re.compile(r"<answer>|</answer>")


def extract_answer(text: str) -> str | None:
    """Content of the last `<answer>...</answer>` in a generated turn, stripped; None if malformed.

    Well-formed means the answer tags pair up in order -- open, close, open, close, ... -- with no tag
    left unclosed, no stray close and no nesting, and the last pair holds some non-blank text. Both of
    our agent protocols end a trajectory with such an answer; the rest of the text is not inspected.
    """
    if not isinstance(text, str):
        raise ValueError(f"text is a {type(text).__name__}; expected the generated turn as a str")
    tags = list(_ANSWER_TAG.finditer(text))
    if not tags:
        return None
    for k, tag in enumerate(tags):
        expected = "<answer>" if k % 2 == 0 else "</answer>"
        if tag.group() != expected:
            return None
    if len(tags) % 2:
        return None  # the last <answer> is never closed
    content = text[tags[-2].end() : tags[-1].start()].strip()
    return content or None


def outcome_reward(
    answer: str | None,
    golds: Golds,
    *,
    metric: str = "f1",
    variant: str = "squad",
    format_penalty: float = -2.0,
) -> float:
    """Outcome reward r_{i,T_i}: `metric` (f1 | em | cover_em) of the answer, maximised over gold aliases,
    or `format_penalty` when the trajectory has no well-formed answer (`answer is None`)."""
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is not a metric; accepted: {', '.join(map(repr, METRICS))}")
    if isinstance(format_penalty, bool) or not (
        isinstance(format_penalty, (int, float)) and math.isfinite(format_penalty)
    ):
        raise ValueError(f"format_penalty={format_penalty!r} must be a finite number")
    aliases = split_golds(golds)  # checked even when the answer is missing: bad data is an error either way
    if answer is None:
        return float(format_penalty)
    return METRICS[metric](answer, aliases, variant)

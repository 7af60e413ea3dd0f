"""QA rewards: answer extraction, format checks, EM / F1 / cover-EM over gold aliases."""

from igpo_rlhf.rewards.answers import extract_answer, outcome_reward
from igpo_rlhf.rewards.qa import (
    ANSWER_SPLIT,
    cover_exact_match,
    exact_match,
    f1_score,
    normalize_answer,
    split_golds,
)

__all__ = [
    "ANSWER_SPLIT",
    "cover_exact_match",
    "exact_match",
    "extract_answer",
    "f1_score",
    "normalize_answer",
    "outcome_reward",
    "split_golds",
]

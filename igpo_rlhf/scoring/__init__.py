"""The belief scorer: every turn's gold-answer log-probs and the old log-probs in one pass."""

from igpo_rlhf.scoring.masks import block_attention_mask
from igpo_rlhf.scoring.scorer import ScoreResult, score_beliefs, score_token_log_probs, score_trajectories

__all__ = [
    "ScoreResult",
    "block_attention_mask",
    "score_beliefs",
    "score_token_log_probs",
    "score_trajectories",
]

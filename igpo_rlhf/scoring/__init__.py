"""The belief scorer: every turn's gold-answer log-probs and the old log-probs in one pass.

The names below load `scorer` (torch, transformers) on first use, so `igpo_rlhf.scoring.budget` and
`igpo_rlhf.scoring.probe` import without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from igpo_rlhf.scoring.masks import block_attention_mask
    from igpo_rlhf.scoring.scorer import ScoreResult, score_beliefs, score_token_log_probs, score_trajectories

_LAZY = {
    "ScoreResult": "igpo_rlhf.scoring.scorer",
    "score_beliefs": "igpo_rlhf.scoring.scorer",
    "score_token_log_probs": "igpo_rlhf.scoring.scorer",
    "score_trajectories": "igpo_rlhf.scoring.scorer",
    "block_attention_mask": "igpo_rlhf.scoring.masks",
}

__all__ = [
    "ScoreResult",
    "block_attention_mask",
    "score_beliefs",
    "score_token_log_probs",
    "score_trajectories",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'igpo_rlhf.scoring' has no attribute {name!r}")

"""Pure IGPO/GRPO/PPO math (torch and numpy only; imports nothing else of ours).

- belief:      the belief b_{i,t} from the gold answer's token log-probs (mean over tokens, best alias)
- info_gain:   IG turn rewards r_{i,t} from the beliefs b_{i,t}
- advantages:  group normalisation r̃_{i,t}, turn advantages Â_{i,t}, their broadcast onto tokens
- ppo:         clipped policy loss, KL to the reference (k1/k2/k3), clipped value loss, masked aggregation
- gae:         GAE advantages and returns over action tokens, for the PPO baseline
"""

from igpo_rlhf.algo.advantages import (
    discounted_sums,
    group_normalize,
    grpo_advantages,
    token_advantages,
    turn_advantages,
)
from igpo_rlhf.algo.belief import log_belief, reduce_aliases
from igpo_rlhf.algo.gae import gae_advantages
from igpo_rlhf.algo.info_gain import info_gain_rewards
from igpo_rlhf.algo.ppo import kl_penalty, masked_aggregate, policy_loss, value_loss

__all__ = [
    "discounted_sums",
    "gae_advantages",
    "group_normalize",
    "grpo_advantages",
    "info_gain_rewards",
    "kl_penalty",
    "log_belief",
    "masked_aggregate",
    "policy_loss",
    "reduce_aliases",
    "token_advantages",
    "turn_advantages",
    "value_loss",
]

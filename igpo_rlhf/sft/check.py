"""How well a model follows the search protocol: rollouts on held-out questions through the real agent loop.

Each question is rolled out with the configured protocol, sampling and limits (`rollout` section), the
searches answered by the proxy's BM25 backend in process. Reported (shares of rollouts):

    searched_then_answered  at least one search, then a well-formed answer (what the warm start teaches)
    answered                a well-formed answer (with or without searching)
    format_fail             no well-formed answer: malformed turn, EOS without answer, cut off
    f1                      mean F1 of the answer against the gold aliases (0 without an answer)
    searches                mean searches per rollout
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from igpo_rlhf.rewards import f1_score
from igpo_rlhf.rollout.agent_loop import Searcher, rollouts_for_config
from igpo_rlhf.rollout.engine import HFEngine
from igpo_rlhf.rollout.trajectory import PromptItem, Trajectory

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from igpo_rlhf.config import RolloutConfig
    from igpo_rlhf.rollout.protocols import AgentProtocol


@dataclass
class ProtocolCheck:
    """Shares over the rollouts of a check (see the module docstring)."""

    rollouts: int
    searched_then_answered: float
    answered: float
    format_fail: float
    f1: float
    searches: float

    def line(self) -> str:
        return (
            f"{self.rollouts} rollouts: searched then answered {self.searched_then_answered:.0%}, answered "
            f"{self.answered:.0%}, F1 {self.f1:.3f}, {self.searches:.2f} searches"
        )

    def as_dict(self) -> dict:
        return asdict(self)


def summarise(trajs: Sequence[Trajectory]) -> ProtocolCheck:
    """The shares of `trajs` (module docstring)."""
    n = len(trajs)
    if n == 0:
        raise ValueError("no rollouts to summarise")
    answered = [t for t in trajs if t.answer is not None]
    return ProtocolCheck(
        rollouts=n,
        searched_then_answered=sum(t.n_searches > 0 for t in answered) / n,
        answered=len(answered) / n,
        format_fail=1 - len(answered) / n,
        f1=sum(f1_score(t.answer, t.golds) for t in answered) / n,
        searches=sum(t.n_searches for t in trajs) / n,
    )


def check_protocol(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    protocol: AgentProtocol,
    search: Searcher,
    items: Sequence[PromptItem],
    rollout: RolloutConfig,
    *,
    n_samples: int = 1,
    seed: int = 0,
) -> tuple[ProtocolCheck, list[Trajectory]]:
    """Rolls out `items` (`n_samples` each, sampling and limits from `rollout`); the shares and the rollouts.

    The model's generation_config and train/eval mode are restored afterwards (the engine replaces the one
    and sets the other), so the model can go on training and be saved as it was."""
    generation_config, training = model.generation_config, model.training
    try:
        trajs = rollouts_for_config(
            HFEngine(model, tokenizer),
            tokenizer,
            protocol,
            search,
            list(items),
            rollout.model_copy(update={"n_samples": n_samples}),
            seed=seed,
            weights_version=0,
        )
    finally:
        model.generation_config = generation_config
        model.train(training)
    return summarise(trajs), trajs

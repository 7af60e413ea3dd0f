"""One multi-turn rollout as the trainer and the belief scorer consume it.

Layout of `token_ids` (every span half-open, recorded while the tokens were sampled or appended, never
recovered by re-tokenising text):

    [ prompt | turn 1 | obs 1 | turn 2 | obs 2 | ... | turn T ]
      0..prompt_len      turn_spans[0], obs_spans[0], ...

Turn t (t = 1..T) is the tokens the policy generated; every turn but the last is a search followed by its
observation, so there are exactly T-1 observations. The belief points are where the contexts c_{i,t} end:
c_{i,0} = the prompt, c_{i,t} = everything up to the end of observation t, for t = 0..T-1 (DESIGN.md
"Belief"); the scorer measures log b_{i,t} at each, the T-1 differences are the IG rewards r_{i,1..T-1}
and the outcome is r_{i,T}.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from igpo_rlhf.rollout.protocols import Action

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

FinishReason = Literal["answer", "invalid", "max_turns", "max_length", "eos"]


@dataclass(frozen=True)
class PromptItem:
    """A question to roll out: its gold answer aliases and where it came from (dataset id, source, ...)."""

    question: str
    golds: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError(f"PromptItem.question={self.question!r}: expected a non-empty string")
        if (
            not isinstance(self.golds, list)
            or not self.golds
            or not all(isinstance(g, str) and g.strip() for g in self.golds)
        ):
            raise ValueError(
                f"PromptItem.golds={self.golds!r} (question {self.question!r}): expected a non-empty list of "
                "non-empty strings (the gold answer aliases)"
            )
        if not isinstance(self.meta, dict):
            raise ValueError(f"PromptItem.meta={self.meta!r}: expected a dict")


@dataclass
class Trajectory:
    """A rollout: exactly the sampled and appended token ids, with integer spans of every segment."""

    group_id: int  # index of the prompt within the step; the n rollouts of one prompt share it
    sample_id: int  # 0..n-1 within the group
    question: str
    golds: list[str]
    meta: dict[str, Any]
    token_ids: list[int]  # [L]: prompt + every turn + every observation, as sampled/appended
    prompt_len: int
    turn_spans: list[tuple[int, int]]  # [T] half-open spans of the tokens the policy generated in turn t
    obs_spans: list[tuple[int, int]]  # [T-1] half-open spans of the observation appended after turn t
    actions: list[Action]  # [T] the parsed turns
    answer: str | None  # the extracted final answer; None: no well-formed answer (format penalty)
    finish_reason: FinishReason
    n_searches: int = 0  # search turns whose observation was appended
    n_search_errors: int = 0  # of those, how many got an error observation
    generate_seconds: float = 0.0  # this rollout's share of the batched generate calls' wall time
    search_seconds: float = 0.0  # this rollout's share of the search requests' wall time
    weights_version: int = 0  # version of the policy weights that generated it (θ_old)

    @property
    def num_turns(self) -> int:
        """T_i."""
        return len(self.turn_spans)

    @property
    def belief_points(self) -> list[int]:
        """[prompt_len] + [end of observation t for t = 1..T-1]: the T ends of contexts c_{i,0..T-1}."""
        return [self.prompt_len] + [end for _, end in self.obs_spans]

    @property
    def action_mask(self) -> list[int]:
        """[L] 1 on tokens the policy generated (inside turn_spans), 0 on prompt and observations."""
        mask = [0] * len(self.token_ids)
        for start, end in self.turn_spans:
            mask[start:end] = [1] * (end - start)
        return mask

    def validate(self) -> None:
        """Checks the layout invariants; ValueError naming the trajectory and the broken one."""
        who = f"trajectory (group {self.group_id}, sample {self.sample_id})"
        n = len(self.token_ids)
        T = len(self.turn_spans)
        if not 0 < self.prompt_len <= n:
            raise ValueError(f"{who}: prompt_len={self.prompt_len} must be in 1..len(token_ids)={n}")
        if T == 0:
            raise ValueError(f"{who}: no turns")
        if len(self.obs_spans) != T - 1:
            raise ValueError(f"{who}: {T} turns need {T - 1} observations, got {len(self.obs_spans)}")
        if len(self.actions) != T:
            raise ValueError(f"{who}: {T} turns but {len(self.actions)} actions")
        cursor = self.prompt_len
        for t, (start, end) in enumerate(self.turn_spans):
            if start != cursor or not start < end:
                raise ValueError(
                    f"{who}: turn {t + 1} span ({start}, {end}) must be non-empty and start at {cursor}"
                )
            cursor = end
            if t < T - 1:
                o_start, o_end = self.obs_spans[t]
                if o_start != cursor or o_end < o_start:
                    raise ValueError(
                        f"{who}: observation {t + 1} span ({o_start}, {o_end}) must start at {cursor}, "
                        "right after its turn"
                    )
                if self.actions[t].kind != "search":
                    raise ValueError(f"{who}: turn {t + 1} is followed by an observation but is not a search")
                cursor = o_end
        if cursor != n:
            raise ValueError(f"{who}: spans end at {cursor} but there are {n} token ids")
        if self.finish_reason not in get_args(FinishReason):
            raise ValueError(
                f"{who}: finish_reason={self.finish_reason!r}; accepted: {get_args(FinishReason)}"
            )
        if (self.finish_reason == "answer") != (self.answer is not None):
            raise ValueError(f"{who}: finish_reason={self.finish_reason!r} with answer={self.answer!r}")

    def to_json(self, tokenizer: PreTrainedTokenizerBase | None = None) -> dict[str, Any]:
        """A JSON-able dict (for the rollouts JSONL); with a tokenizer, the text of every segment too."""
        out: dict[str, Any] = {
            "group_id": self.group_id,
            "sample_id": self.sample_id,
            "question": self.question,
            "golds": list(self.golds),
            "meta": self.meta,
            "token_ids": list(self.token_ids),
            "prompt_len": self.prompt_len,
            "turn_spans": [list(s) for s in self.turn_spans],
            "obs_spans": [list(s) for s in self.obs_spans],
            "belief_points": self.belief_points,
            "actions": [{**asdict(a), "queries": list(a.queries)} for a in self.actions],
            "answer": self.answer,
            "finish_reason": self.finish_reason,
            "n_searches": self.n_searches,
            "n_search_errors": self.n_search_errors,
            "generate_seconds": self.generate_seconds,
            "search_seconds": self.search_seconds,
            "weights_version": self.weights_version,
        }
        if tokenizer is not None:
            ids = self.token_ids

            def text(span: tuple[int, int]) -> str:
                return tokenizer.decode(ids[span[0] : span[1]], skip_special_tokens=False)

            out["prompt_text"] = text((0, self.prompt_len))
            out["turn_texts"] = [text(s) for s in self.turn_spans]
            out["obs_texts"] = [text(s) for s in self.obs_spans]
        return out

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Trajectory:
        """Inverse of to_json (text fields are ignored); the result is validated."""
        traj = cls(
            group_id=row["group_id"],
            sample_id=row["sample_id"],
            question=row["question"],
            golds=list(row["golds"]),
            meta=dict(row["meta"]),
            token_ids=list(row["token_ids"]),
            prompt_len=row["prompt_len"],
            turn_spans=[tuple(s) for s in row["turn_spans"]],
            obs_spans=[tuple(s) for s in row["obs_spans"]],
            actions=[Action(**{**a, "queries": tuple(a["queries"])}) for a in row["actions"]],
            answer=row["answer"],
            finish_reason=row["finish_reason"],
            n_searches=row["n_searches"],
            n_search_errors=row["n_search_errors"],
            generate_seconds=row["generate_seconds"],
            search_seconds=row["search_seconds"],
            weights_version=row["weights_version"],
        )
        traj.validate()
        return traj

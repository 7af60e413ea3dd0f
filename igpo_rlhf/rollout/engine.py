"""Generator engines behind one interface: `generate(contexts, ...) -> list[Generation]`.

`HFEngine` runs transformers' `generate` (CPU or GPU). The vLLM engine (GPU only) lives in
`igpo_rlhf/rollout/vllm_engine.py` and returns the same `Generation`s.

Contract of `generate` (both engines):
- every context is a list of token ids; rows may differ in length;
- row r samples at most `max_new_tokens[r]` tokens and stops right after the token that completes one of
  `stop_strings` in its generated text (the stop string is kept), or after an EOS token (kept);
- the result holds exactly the ids each row sampled: no padding, nothing after the row stopped;
- `finish` is "stop" (a stop string), "eos" or "length" (the row's budget);
- the same seed, weights and inputs give the same tokens (on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Finish = Literal["stop", "eos", "length"]


@dataclass(frozen=True)
class Generation:
    """One row's output: the sampled token ids and why it stopped."""

    token_ids: list[int]
    finish: Finish


class Engine(Protocol):
    """What the agent loop needs from a generator."""

    def generate(
        self,
        contexts: list[list[int]],
        *,
        max_new_tokens: list[int],
        stop_strings: list[str],
        temperature: float,
        top_p: float,
        top_k: int,
        seed: int | None,
    ) -> list[Generation]: ...


def check_generate_args(
    contexts: list[list[int]], max_new_tokens: list[int], temperature: float, top_p: float, top_k: int
) -> None:
    """The argument checks every engine makes (ValueError naming the bad argument)."""
    if not contexts:
        raise ValueError("contexts is empty: give at least one list of token ids")
    if len(max_new_tokens) != len(contexts):
        raise ValueError(f"max_new_tokens has {len(max_new_tokens)} entries for {len(contexts)} contexts")
    for r, (ctx, budget) in enumerate(zip(contexts, max_new_tokens, strict=True)):
        if not ctx:
            raise ValueError(f"contexts[{r}] is empty: a context needs at least one token id")
        if not isinstance(budget, int) or budget < 1:
            raise ValueError(f"max_new_tokens[{r}]={budget!r}: expected an int >= 1")
    if temperature < 0:
        raise ValueError(f"temperature={temperature}: expected >= 0 (0 means greedy)")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p}: expected 0 < top_p <= 1")
    if top_k == 0 or top_k < -1:
        raise ValueError(f"top_k={top_k}: expected -1 (disabled) or a positive int")


class _RowStops(StoppingCriteria):
    """Per-row stop: a stop string in the row's generated text, an EOS token, or the row's own budget.

    Records, the first time each row stops, how many tokens it had sampled and why; tokens that `generate`
    appends to a finished row afterwards (padding) are never looked at.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        context_len: int,
        budgets: list[int],
        eos_ids: set[int],
        stop_strings: list[str],
    ):
        self.tokenizer = tokenizer
        self.context_len = context_len
        self.budgets = budgets
        self.eos_ids = eos_ids
        self.stop_strings = stop_strings
        # A stop string of c characters lies within the last c tokens (each token decodes to >= 1 character);
        # two more tokens of margin for byte-level pieces.
        self.window = max((len(s) for s in stop_strings), default=0) + 2
        self.lengths: list[int | None] = [None] * len(budgets)
        self.finish: list[Finish | None] = [None] * len(budgets)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        n_new = input_ids.shape[1] - self.context_len
        last = input_ids[:, -1].tolist()
        done = []
        for r, budget in enumerate(self.budgets):
            if self.lengths[r] is None:
                reason: Finish | None = None
                if self.stop_strings:
                    tail = input_ids[r, max(self.context_len, input_ids.shape[1] - self.window) :].tolist()
                    text = self.tokenizer.decode(tail, skip_special_tokens=False)
                    if any(s in text for s in self.stop_strings):
                        reason = "stop"
                if reason is None and last[r] in self.eos_ids:
                    reason = "eos"
                if reason is None and n_new >= budget:
                    reason = "length"
                if reason is not None:
                    self.lengths[r], self.finish[r] = n_new, reason
            done.append(self.lengths[r] is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class HFEngine:
    """transformers `generate` over left-padded batches (CPU and GPU)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError(
                "the tokenizer has neither a pad token nor an EOS token; set tokenizer.pad_token"
            )
        self.pad_id = int(pad)
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        if not eos_ids:
            raise ValueError("neither the tokenizer nor the model's generation_config names an EOS token")
        self.eos_ids = eos_ids
        # transformers fills every option we leave unset from model.generation_config (a checkpoint's
        # repetition_penalty, top_k, ...): the engine owns its model, so it keeps only neutral defaults.
        self.model.generation_config = GenerationConfig()

    @torch.no_grad()
    def generate(
        self,
        contexts: list[list[int]],
        *,
        max_new_tokens: list[int],
        stop_strings: list[str],
        temperature: float,
        top_p: float,
        top_k: int,
        seed: int | None,
    ) -> list[Generation]:
        """Samples a continuation of every context (contract in the module docstring).

        Only temperature / top_p / top_k shape the distribution: the model's own generation_config
        (repetition penalty, default top_k, ...) was replaced at construction, so the tokens are sampled
        from π_θ itself. temperature=0 is greedy.
        """
        check_generate_args(contexts, max_new_tokens, temperature, top_p, top_k)
        width = max(len(c) for c in contexts)
        input_ids = torch.full((len(contexts), width), self.pad_id, dtype=torch.long)  # [B, W] left-padded
        attention_mask = torch.zeros((len(contexts), width), dtype=torch.long)  # [B, W]
        for r, ctx in enumerate(contexts):
            input_ids[r, width - len(ctx) :] = torch.tensor(ctx, dtype=torch.long)
            attention_mask[r, width - len(ctx) :] = 1
        sample = temperature > 0
        config = GenerationConfig(
            max_new_tokens=max(max_new_tokens),
            do_sample=sample,
            temperature=temperature if sample else None,
            top_p=top_p if sample else None,
            # 0, not None: transformers fills an unset top_k with its default 50, which would sample from a
            # truncated distribution while the trainer computes log-probs of the full one
            top_k=(top_k if top_k > 0 else 0) if sample else None,
            eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.pad_id,
            bos_token_id=None,
        )
        stops = _RowStops(self.tokenizer, width, list(max_new_tokens), self.eos_ids, list(stop_strings))
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([stops]),
            )  # [B, W + new]
        out = out[:, width:].tolist()
        results = []
        for r in range(len(contexts)):
            n, finish = stops.lengths[r], stops.finish[r]
            if n is None:  # generate ran out of steps first: the row used its whole budget
                n, finish = min(max_new_tokens[r], len(out[r])), "length"
            results.append(Generation(token_ids=out[r][:n], finish=finish))
        return results

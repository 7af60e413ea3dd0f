"""Glue around vLLM (request building, output → Generation, engine routing).

vLLM needs a GPU, so these tests use a FAKE engine actor that answers like vLLM's `RolloutRayActor.generate`
(a RequestOutput-shaped object whose single completion has token_ids, finish_reason, stop_reason) from a
scripted continuation per prompt, applying max_tokens and stop strings the way vLLM documents them. The
real vLLM calls are not exercised here.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from igpo_rlhf.rollout.engine import Generation
from igpo_rlhf.rollout.vllm_engine import VLLMEngine, engine_index, row_seeds, sampling_kwargs, to_generation
from tests.rollout.tiny import make_tokenizer


def _output(token_ids, finish_reason, stop_reason=None, n=1):
    completion = SimpleNamespace(token_ids=token_ids, finish_reason=finish_reason, stop_reason=stop_reason)
    return SimpleNamespace(outputs=[completion] * n)


def test_sampling_kwargs():
    kw = sampling_kwargs(
        max_new_tokens=7, stop_strings=["</search>"], temperature=1.0, top_p=0.9, top_k=-1, seed=5
    )
    assert kw == {
        "n": 1,
        "max_tokens": 7,
        "stop": ["</search>"],
        "include_stop_str_in_output": True,
        "temperature": 1.0,
        "top_p": 0.9,
        "top_k": 0,  # vLLM's "disabled"
        "seed": 5,
        "skip_special_tokens": False,
    }
    assert (
        sampling_kwargs(max_new_tokens=1, stop_strings=[], temperature=0.0, top_p=1.0, top_k=20, seed=None)[
            "top_k"
        ]
        == 20
    )


@pytest.mark.parametrize(
    "output, expected",
    [
        (_output([5, 6], "stop", "</search>"), Generation([5, 6], "stop")),
        (_output([5, 2], "stop", None), Generation([5, 2], "eos")),
        (_output([5, 9], "stop", 9), Generation([5, 9], "eos")),
        (_output([5, 6, 7], "length"), Generation([5, 6, 7], "length")),
    ],
)
def test_to_generation(output, expected):
    assert to_generation(output) == expected


def test_to_generation_errors():
    with pytest.raises(RuntimeError, match="finish_reason='abort'"):
        to_generation(_output([1], "abort"))
    with pytest.raises(ValueError, match="one completion per request"):
        to_generation(_output([1], "length", n=2))


def test_row_seeds_are_distinct_and_reproducible():
    seeds = row_seeds(3, 16)
    assert len(set(seeds)) == 16
    assert seeds == row_seeds(3, 16)
    assert row_seeds(None, 2) == [None, None]


def test_engine_index_follows_the_prompt_prefix():
    prompt = list(range(300))
    assert engine_index(prompt + [1, 2], 4) == engine_index(prompt + [7], 4)  # same first 256 tokens
    assert {engine_index([k, 1, 2], 4) for k in range(50)} == {0, 1, 2, 3}  # spread over engines


class _FakeVLLMActor:
    """Stands in for OpenRLHF's RolloutRayActor (vLLM needs a GPU): continues each prompt with a scripted
    token list, stopping like vLLM: after a stop string (reported as stop_reason), at EOS, or at max_tokens."""

    def __init__(self, tokenizer, script: dict[tuple[int, ...], list[int]]):
        self.tokenizer, self.script, self.requests = tokenizer, script, []
        self.generate = SimpleNamespace(remote=self._generate)

    def _generate(self, prompt_token_ids, sampling_params):
        self.requests.append((prompt_token_ids, sampling_params))
        continuation = self.script[tuple(prompt_token_ids)]
        out = []
        for tok_id in continuation[: sampling_params["max_tokens"]]:
            out.append(tok_id)
            text = self.tokenizer.decode(out)
            hit = next((s for s in sampling_params["stop"] if s in text), None)
            if hit is not None:
                return _output(list(out), "stop", hit)
            if tok_id == self.tokenizer.eos_token_id:
                return _output(list(out), "stop", None)
        return _output(list(out), "length")


def test_vllm_engine_routes_rows_and_keeps_their_order():
    tok = make_tokenizer()
    prompts = [tok.encode(f"Question {k}: who?") for k in range(6)]
    search = tok.encode("<search> who </search>")
    script = {
        tuple(prompts[0]): search + tok.encode(" trailing"),
        tuple(prompts[1]): tok.encode("<answer> Bob") + [tok.eos_token_id] + tok.encode(" more"),
        tuple(prompts[2]): tok.encode("a long ramble without any tag at all"),
        tuple(prompts[3]): search,
        tuple(prompts[4]): search,
        tuple(prompts[5]): search,
    }
    actors = [_FakeVLLMActor(tok, script), _FakeVLLMActor(tok, script)]
    engine = VLLMEngine(actors, make_sampling_params=dict, get=lambda refs: refs)
    gens = engine.generate(
        prompts,
        max_new_tokens=[50, 50, 4, 50, 50, 50],
        stop_strings=["</search>", "</answer>"],
        temperature=1.0,
        top_p=1.0,
        top_k=-1,
        seed=0,
    )
    eos_row = tok.encode("<answer> Bob") + [tok.eos_token_id]
    assert gens[0] == Generation(search, "stop")
    assert gens[1] == Generation(eos_row, "eos")
    assert gens[2] == Generation(script[tuple(prompts[2])][:4], "length")
    assert gens[3:] == [Generation(search, "stop")] * 3
    requests = [req for actor in actors for req in actor.requests]
    assert sorted(map(tuple, (r[0] for r in requests))) == sorted(map(tuple, prompts))
    for prompt, params in requests:
        assert actors[engine_index(prompt, 2)] is next(a for a in actors if (prompt, params) in a.requests)
        assert params["include_stop_str_in_output"] and params["stop"] == ["</search>", "</answer>"]
    assert len({params["seed"] for _, params in requests}) == 6


def test_vllm_engine_checks_arguments():
    engine = VLLMEngine([object()], make_sampling_params=dict, get=lambda refs: refs)
    with pytest.raises(ValueError, match="max_new_tokens has 1 entries for 2 contexts"):
        engine.generate(
            [[1], [2]], max_new_tokens=[3], stop_strings=[], temperature=1.0, top_p=1.0, top_k=-1, seed=0
        )
    with pytest.raises(ValueError, match="at least one vLLM engine actor"):
        VLLMEngine([], get=lambda refs: refs)

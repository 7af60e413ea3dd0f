"""Glue around vLLM (request building, output → Generation, engine routing, closing).

vLLM needs a GPU, so these tests use a FAKE engine actor that answers like vLLM's `RolloutRayActor.generate`
(a RequestOutput-shaped object whose single completion has token_ids, finish_reason, stop_reason) from a
scripted continuation per prompt, applying max_tokens and stop strings the way vLLM documents them. The
real vLLM calls are not exercised here.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from igpo_rlhf.rollout.engine import Generation
from igpo_rlhf.rollout.vllm_engine import EngineRouter, VLLMEngine, row_seeds, sampling_kwargs, to_generation
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
    assert [len(a.requests) for a in actors] == [3, 3]  # six prompts, round-robin
    for _, params in requests:
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


def test_router_spreads_prompts_that_share_a_long_prefix_and_keeps_each_trajectory_on_one_engine():
    """8 prompts x 4 rollouts that share a 300-token system prefix (every tool_call prompt does), 4 engines
    (FAKE vLLM actors), three turns of growing contexts with observations in between: every engine gets two
    prompts' rollouts, the rollouts of a prompt stay together, and every turn of a trajectory goes to the
    engine of its first. A hash of the first 256 tokens (the old routing) sent all 32 to one engine."""
    import zlib

    import numpy as np

    tok = make_tokenizer()
    system = [5 + (k % 40) for k in range(300)]
    prompts = [system + tok.encode(f"Question {q}: who?") for q in range(8)]
    continuation = tok.encode("<search> who </search>")
    actors = [_FakeVLLMActor(tok, _Anything(continuation)) for _ in range(4)]
    engine = VLLMEngine(actors, make_sampling_params=dict, get=lambda refs: refs)
    rng = np.random.default_rng(0)
    contexts = [list(p) for p in prompts for _ in range(4)]  # trajectory t = prompt t // 4, sample t % 4
    served: list[list[int]] = [[] for _ in contexts]  # the engine of each turn of each trajectory
    for turn in range(3):
        alive = [t for t in range(len(contexts)) if turn == 0 or t % 3 != 0]  # some trajectories finished
        before = [len(a.requests) for a in actors]
        gens = engine.generate([contexts[t] for t in alive], max_new_tokens=[20] * len(alive),
                               stop_strings=["</search>"], temperature=1.0, top_p=1.0, top_k=-1, seed=turn)  # fmt: skip
        for k, actor in enumerate(actors):
            for prompt_ids, _ in actor.requests[before[k] :]:
                t = next(t for t in alive if contexts[t] == list(prompt_ids) and len(served[t]) == turn)
                served[t].append(k)
        for t, gen in zip(alive, gens, strict=True):
            observation = [int(x) for x in rng.integers(5, 60, size=int(rng.integers(3, 9)))]
            contexts[t] = contexts[t] + gen.token_ids + observation
    assert all(len(set(engines)) == 1 for engines in served)  # sticky per trajectory
    first = [engines[0] for engines in served]
    assert all(len(set(first[4 * q : 4 * q + 4])) == 1 for q in range(8))  # a prompt's rollouts together
    assert sorted(first.count(k) for k in range(4)) == [8, 8, 8, 8]  # two prompts per engine
    old = {zlib.crc32(np.asarray(p[:256], dtype=np.int64).tobytes()) % 4 for p in prompts}
    assert len(old) == 1  # the old routing: one engine for everything


def test_router_forgets_old_prompts_and_checks_its_size():
    router = EngineRouter(3, max_prompts=2)
    assert router.route([[1, 2], [3, 4], [1, 2, 9], [5, 6]]) == [0, 1, 0, 2]  # [1, 2, 9] continues [1, 2]
    # two prompts are remembered: [1, 2] (used last by [1, 2, 9]) and [5, 6]; [3, 4] was the least recent
    assert router.route([[1, 2, 8]]) == [0]
    assert router.route([[3, 4, 7]]) == [
        0
    ]  # forgotten: a new prompt, the next engine in turn (not its old 1)
    with pytest.raises(ValueError, match="n_engines=0"):
        EngineRouter(0)


def test_close_kills_the_engines_and_removes_their_group(local_ray):
    """On a real local Ray: stand-in actors (vLLM needs a GPU) in a real placement group."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    @ray.remote(num_cpus=0.1)
    class StandIn:
        def ping(self) -> int:
            return 1

    group = placement_group([{"CPU": 0.1}, {"CPU": 0.1}])
    ray.get(group.ready(), timeout=60)
    actors = [StandIn.options(scheduling_strategy=PlacementGroupSchedulingStrategy(group, k)).remote()
              for k in range(2)]  # fmt: skip
    assert ray.get([a.ping.remote() for a in actors]) == [1, 1]
    engine = VLLMEngine(actors, placement_group=group, make_sampling_params=dict)
    engine.close()
    engine.close()  # idempotent
    for actor in actors:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(actor.ping.remote(), timeout=60)
    assert placement_group_table(group)["state"] == "REMOVED" and engine.actors == []


class _Anything(dict):
    """A script that continues every context the same way."""

    def __init__(self, continuation):
        super().__init__()
        self.continuation = continuation

    def __getitem__(self, key):
        return self.continuation


def test_waiting_for_engine_gpus_has_a_deadline_and_leaves_no_group(local_ray):
    import ray
    from ray.util.placement_group import placement_group_table

    from igpo_rlhf.rollout.vllm_engine import reserve_engine_gpus

    before = set(placement_group_table())
    with pytest.raises(
        TimeoutError, match=r"cannot reserve 2 GPU\(s\) for the vLLM engines \(resources.rollout"
    ):
        reserve_engine_gpus(2, timeout_s=2)  # this Ray has no GPU
    new = [g for k, g in placement_group_table().items() if k not in before]
    assert [g["state"] for g in new] == ["REMOVED"]
    assert ray.is_initialized()


def test_a_missing_vllm_is_a_clear_error():
    import importlib.util

    from igpo_rlhf.rollout.vllm_engine import require_vllm

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(ValueError, match=r"rollout.engine=vllm needs the vllm package.*make install-gpu"):
        require_vllm()

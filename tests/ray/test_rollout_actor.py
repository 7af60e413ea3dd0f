"""RolloutActor on a real local Ray, with the real search proxy on loopback and a tiny Qwen2 checkpoint on
disk: rollouts through the actor equal an in-process engine with the same weights and seed, before and
after a weight push, and a push changes what is generated."""

from __future__ import annotations

import json

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from igpo_rlhf.config import Config, load_config
from igpo_rlhf.models.loading import load_tokenizer
from igpo_rlhf.ray.rollout_actor import RolloutActor
from igpo_rlhf.rollout.agent_loop import call_seed, run_rollouts
from igpo_rlhf.rollout.engine import HFEngine
from igpo_rlhf.rollout.protocols import make_protocol
from igpo_rlhf.rollout.searcher import ProxySearcher
from igpo_rlhf.rollout.trajectory import PromptItem
from services.search_proxy.launch import start_proxy
from services.search_proxy.settings import ProxySettings
from tests.rollout.tiny import save_tiny

CORPUS = [
    {"id": "p1", "title": "Paris", "text": "Paris is the capital of France."},
    {"id": "p2", "title": "Rome", "text": "Rome is the capital of Italy."},
]
ROLLOUT = {
    "prompt_template": "Answer with search. Question: {question}\n",
    "n_samples": 2,
    "max_turns": 3,
    "max_new_tokens": 10,
    "max_prompt_tokens": 60,
    "max_total_tokens": 90,
    "max_observation_tokens": 40,
    "search_top_k": 1,
    "batch_size": 4,
}
PROMPTS = [PromptItem("Where is the tower?", ["Paris"]), PromptItem("Capital of Italy?", ["Rome"])]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    root = tmp_path_factory.mktemp("proxy")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(p) + "\n" for p in CORPUS), encoding="utf-8")
    settings = ProxySettings(backend="bm25", corpus=corpus, port=0, cache={"dir": root, "mode": "off"})
    with start_proxy(settings, port=0) as running:
        yield running


def config(model_dir, *overrides: str) -> Config:
    """A config with the rollout section above, the tiny model and seed 3 (search without retries)."""
    rollout = [f"rollout.{k}={v!r}" if isinstance(v, str) else f"rollout.{k}={v}" for k, v in ROLLOUT.items()]
    return load_config(
        None,
        [f"model.path={model_dir}", "train.seed=3", "train.prompts_per_step=2", "search.timeout_s=10",
         "search.retries=0", *rollout, *overrides],
    )  # fmt: skip


def _in_process(model_dir, state_dict, url, step, group_offset=0):
    """The same rollouts without Ray: a fresh engine with `state_dict` and the actor's seed rule."""
    cfg = config(model_dir).rollout
    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return run_rollouts(
        HFEngine(model, tok),
        tok,
        make_protocol(cfg, tok, "<answer>"),
        ProxySearcher(url, timeout_s=10.0, retries=0),
        PROMPTS,
        n_samples=cfg.n_samples,
        max_turns=cfg.max_turns,
        max_new_tokens=cfg.max_new_tokens,
        max_total_tokens=cfg.max_total_tokens,
        max_observation_tokens=cfg.max_observation_tokens,
        search_top_k=cfg.search_top_k,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        batch_size=cfg.batch_size,
        seed=call_seed(3, step, group_offset),
        max_prompt_tokens=cfg.max_prompt_tokens,
    )


@pytest.mark.slow
def test_generate_and_weight_push_through_the_actor(local_ray, model_dir, proxy):
    actor = ray.remote(RolloutActor).options(num_cpus=1).remote(config(model_dir), proxy.url)
    before = ray.get(actor.generate.remote(PROMPTS, 0))
    assert ray.get(actor.weights_version.remote()) == 0
    expected = _in_process(model_dir, None, proxy.url, step=0)
    assert [t.token_ids for t in before] == [t.token_ids for t in expected]
    assert [(t.group_id, t.sample_id) for t in before] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(t.weights_version == 0 for t in before)

    # Push perturbed weights (as the policy would after an update).
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()
    gen = torch.Generator().manual_seed(0)
    perturbed = {k: v + 0.3 * torch.randn(v.shape, generator=gen) for k, v in base.items()}
    assert ray.get(actor.update_weights.remote(perturbed, 1)) == 1
    assert ray.get(actor.weights_version.remote()) == 1
    after = ray.get(actor.generate.remote(PROMPTS, 0))
    assert [t.token_ids for t in after] != [t.token_ids for t in before]  # same seed, new weights
    expected_after = _in_process(model_dir, perturbed, proxy.url, step=0)
    assert [t.token_ids for t in after] == [t.token_ids for t in expected_after]
    assert all(t.weights_version == 1 for t in after)

    # Another step samples with another seed; group_offset shifts group ids (several actors share a step).
    shifted = ray.get(actor.generate.remote(PROMPTS, 1, group_offset=5))
    assert [t.group_id for t in shifted] == [5, 5, 6, 6]
    assert [t.token_ids for t in shifted] == [
        t.token_ids for t in _in_process(model_dir, perturbed, proxy.url, 1, 5)
    ]
    for t in after + shifted:
        t.validate()


def test_actor_rejects_vllm_engine_and_bad_arguments(model_dir, proxy):
    with pytest.raises(ValueError, match="engine=vllm is served by the vLLM engine actors"):
        RolloutActor(config(model_dir, "rollout.engine=vllm", "resources.rollout.num_gpus=1"), proxy.url)
    with pytest.raises(ValueError, match="is not a Hugging Face checkpoint directory"):
        RolloutActor(config(model_dir / "nope"), proxy.url)


def test_update_weights_with_a_wrong_state_dict_is_an_error(model_dir, proxy):
    actor = RolloutActor(config(model_dir), proxy.url)
    with pytest.raises(ValueError, match="lacks .* of the model's parameters"):
        actor.update_weights({"model.norm.weight": torch.ones(32)}, 1)
    assert actor.weights_version() == 0


def test_sampling_overrides_apply_to_one_call_only(model_dir, proxy):
    actor = RolloutActor(config(model_dir), proxy.url)
    greedy = actor.generate(PROMPTS, 0, sampling={"n_samples": 3, "temperature": 0.0})
    assert [(t.group_id, t.sample_id) for t in greedy] == [(g, s) for g in (0, 1) for s in range(3)]
    # greedy decoding: the three rollouts of a prompt are one trajectory
    assert greedy[0].token_ids == greedy[1].token_ids == greedy[2].token_ids
    sampled = actor.generate(PROMPTS, 0)
    assert [t.token_ids for t in sampled] == [t.token_ids for t in _in_process(model_dir, None, proxy.url, 0)]

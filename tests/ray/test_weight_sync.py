"""θ_old by broadcast from the policy's rank 0 into the belief scorers (igpo_rlhf/ray/weight_sync.py).

On GPUs the group is NCCL; here the same group is gloo (torch's ProcessGroupGloo on a TCPStore), between the
real PolicyActor (2 ranks, DeepSpeed ZeRO-3 on CPU: every rank gathers each parameter, rank 0 sends) and two
real BeliefScorerActors loaded from ANOTHER checkpoint: after one broadcast their weights are the policy's and
their scores are those of the policy's model. CPU runs keep the object store (`scorer_transport`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from igpo_rlhf.config import load_config
from igpo_rlhf.ray.group import ActorGroup
from igpo_rlhf.ray.placement import place_roles, release
from igpo_rlhf.ray.policy import PolicyActor
from igpo_rlhf.ray.scorer import BeliefScorerActor
from igpo_rlhf.ray.weight_sync import check_same_parameters, param_specs, scorer_transport
from igpo_rlhf.scoring import score_trajectories

VOCAB = 48


def save_model(path: Path, seed: int, layers: int = 2) -> Path:
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True)  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


def test_scorers_receive_the_policys_weights_by_broadcast(local_ray, tmp_path):
    policy_dir, other_dir = save_model(tmp_path / "policy", 0), save_model(tmp_path / "other", 1)
    cfg = load_config(None, [f"model.path={policy_dir}", "train.zero_stage=3", "train.micro_batch_size=1",
                             "resources.policy.num_actors=2", "resources.policy.num_cpus=0.2",
                             "resources.scorer.num_actors=2", "resources.scorer.num_cpus=0.2"])  # fmt: skip
    placements = place_roles(cfg.resources, ["policy", "scorer"])
    try:
        policy = ActorGroup(PolicyActor, placements["policy"], distributed=True)
        policy.call("init_model", cfg, grad_accum=1, total_optimizer_steps=1)
        scorers = ActorGroup(BeliefScorerActor, placements["scorer"], init_args=(str(other_dir),))
        expected = ray.get(policy.call_async("state_dict_for_sync")[0])
        before = ray.get(scorers.actors[0].score.remote([[1, 2, 3, 4]], [[2]], [5], [[[6, 7]]]))

        address, port = ray.get(policy.actors[0].weight_group_address.remote())
        world = len(scorers) + 1
        sent = policy.call_async("join_scorer_group", address, port, world, "gloo")
        received = [a.join_weight_group.remote(address, port, k + 1, world, "gloo") for k, a in enumerate(scorers.actors)]  # fmt: skip
        specs, *_ = ray.get(sent)
        for k, spec in enumerate(ray.get(received)):
            check_same_parameters(specs, spec, f"scorer {k}")
        counts = ray.get(policy.call_async("broadcast_to_scorers") + [a.receive_weights.remote(7) for a in scorers.actors])  # fmt: skip
        assert counts[:2] == [len(specs), 0] and counts[2:] == [7, 7]

        reference = AutoModelForCausalLM.from_pretrained(policy_dir, attn_implementation="sdpa").eval()
        want = score_trajectories(reference, [[1, 2, 3, 4]], [[2]], [5], [[[6, 7]]])
        for actor in scorers.actors:
            got = ray.get(actor.score.remote([[1, 2, 3, 4]], [[2]], [5], [[[6, 7]]]))
            assert got.beliefs[0] == pytest.approx(want.beliefs[0], abs=1e-6)
            assert ray.get(actor.weights_version.remote()) == 7
        assert before.beliefs[0] != pytest.approx(want.beliefs[0], abs=1e-3)  # the checkpoints do differ
        # and bit for bit: the scorer's weights are the policy's (tied embeddings sent once)
        state = ray.get(scorers.actors[1].__ray_call__.remote(lambda self: {k: v.clone() for k, v in self._model.state_dict().items()}))  # fmt: skip
        for name, tensor in expected.items():
            assert torch.equal(state[name], tensor), name
    finally:
        release(placements)


def test_a_scorer_of_another_architecture_is_refused(tmp_path):
    two = param_specs(AutoModelForCausalLM.from_pretrained(save_model(tmp_path / "a", 0)))
    three = param_specs(AutoModelForCausalLM.from_pretrained(save_model(tmp_path / "b", 0, layers=3)))
    with pytest.raises(ValueError, match=r"parameter 25 is ParamSpec\(name='model.layers.2.self_attn.q_proj.weight'.*"
                                         r"but the policy sends ParamSpec\(name='model.norm.weight'"):  # fmt: skip
        check_same_parameters(two, three, "scorer 0")
    with pytest.raises(ValueError, match="scorer 0 has 25 parameters; the policy sends 26"):
        check_same_parameters(two, two[:-1], "scorer 0")
    bf16 = param_specs(AutoModelForCausalLM.from_pretrained(tmp_path / "a", dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"parameter 0 is ParamSpec\(name='model.embed_tokens.weight', shape=\(48, 32\), dtype='bfloat16'\)"):  # fmt: skip
        check_same_parameters(two, bf16, "scorer 0")


def test_cpu_runs_keep_the_object_store():
    assert scorer_transport(0.0, 0.0) == "object_store"
    assert scorer_transport(0.4, 0.0) == "object_store"  # scorers on CPU
    assert scorer_transport(0.4, 0.2) == "nccl"

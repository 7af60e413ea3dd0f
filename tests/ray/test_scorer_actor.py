"""BeliefScorerActor on a real local Ray (CPU): it scores as the in-process scorer does, and after new weights
arrive through the object store it scores exactly as the updated model does."""

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from igpo_rlhf.ray.scorer import BeliefScorerActor
from igpo_rlhf.scoring import ScoreResult, score_trajectories
from tests.scoring.test_scorer import PROBE, make_batch
from tests.scoring.tiny_models import tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("scorer_model")
    tiny_model("qwen2").save_pretrained(path)
    return path


def perturbed(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """θ_old after an 'update': every weight moved by seeded noise."""
    generator = torch.Generator().manual_seed(1)
    return {name: w + 0.05 * torch.randn(w.shape, generator=generator) for name, w in state_dict.items()}


def in_process(model_dir, state_dict, batch) -> ScoreResult:
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa", dtype=torch.float32)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    sequences, belief_points, answers, action_masks = batch
    return score_trajectories(model, sequences, belief_points, PROBE, answers, action_masks=action_masks)


def assert_same(actual, expected, atol=1e-5):
    for got, want in zip(actual.beliefs, expected.beliefs, strict=True):
        assert got == pytest.approx(want, abs=atol)
    for got, want in zip(actual.token_log_probs, expected.token_log_probs, strict=True):
        torch.testing.assert_close(got, want, atol=atol, rtol=0)


def test_weights_pushed_through_the_object_store_change_the_scores(local_ray, model_dir):
    batch = make_batch()
    sequences, belief_points, answers, action_masks = batch
    actor = ray.remote(BeliefScorerActor).remote(str(model_dir))
    before = ray.get(actor.score.remote(sequences, belief_points, PROBE, answers, action_masks))
    assert_same(before, in_process(model_dir, None, batch))
    assert ray.get(actor.weights_version.remote()) == 0

    original = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    new_weights = perturbed(original)
    assert ray.get(actor.update_weights.remote(ray.put(new_weights), 7)) == 7
    assert ray.get(actor.weights_version.remote()) == 7
    after = ray.get(actor.score.remote(sequences, belief_points, PROBE, answers, action_masks))

    assert_same(after, in_process(model_dir, new_weights, batch))
    moved = max(
        abs(a - b)
        for row_a, row_b in zip(after.beliefs, before.beliefs, strict=True)
        for a, b in zip(row_a, row_b, strict=True)
    )
    assert moved > 1e-2  # the update really reached the scorer

    # a bad update is refused as a whole: the scorer keeps version 7 and its weights
    bad = dict(new_weights)
    bad["lm_head.weight"] = bad["lm_head.weight"][:, :10]
    with pytest.raises(
        ValueError, match=r"lm_head.weight with shape \(300, 10\), the model's is \(300, 64\)"
    ):
        ray.get(actor.update_weights.remote(ray.put(bad), 8))
    assert ray.get(actor.weights_version.remote()) == 7
    assert_same(ray.get(actor.score.remote(sequences, belief_points, PROBE, answers, action_masks)), after, 0)
    ray.kill(actor)

"""score_trajectories / score_beliefs against the slow obvious computation (tests/scoring/naive.py).

Tolerances: float32 1e-4 (nats, on each mean log-prob and token log-prob). bfloat16 0.02: with 8 mantissa bits the
one-pass and the per-point computations round differently (different kernels and reduction orders); on these
models they differ by up to 6e-3 (measured), while a wrong RoPE position moves a belief by ~1 (see
test_test_model_is_sensitive_to_positions).
"""

import random

import pytest
import torch

from igpo_rlhf.scoring import score_beliefs, score_trajectories
from tests.scoring.naive import naive_belief, naive_beliefs, naive_token_log_probs
from tests.scoring.tiny_models import FAMILIES, VOCAB, tiny_model

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
PROBE = [7, 8, 9]  # stands for the ids of "<answer>"


def make_batch(seed: int = 0):
    """Short and long trajectories with every layout of belief points the trainer can send."""
    rng = random.Random(seed)
    lengths = [3, 17, 250, 40, 180, 1, 90]
    sequences = [[rng.randrange(VOCAB) for _ in range(n)] for n in lengths]
    belief_points = [
        [1, 2, 3],  # every prefix of a short trajectory, down to the first token alone
        [17, 17, 17],  # all at its end
        [200, 12, 250, 97, 31],  # several, unsorted, the last at the end
        [25],  # a single belief point
        [],  # none: token log-probs only
        [1],  # a one-token trajectory
        sorted(rng.sample(range(1, 91), 4)),
    ]
    # 1 to 3 aliases per trajectory, of different lengths (1 to 6 tokens)
    answers = [
        [[rng.randrange(VOCAB) for _ in range(rng.randint(1, 6))] for _ in range(rng.randint(1, 3))]
        for _ in lengths
    ]
    answers[2] = [[5], [11, 12, 13, 14, 15, 16], [40, 41]]
    # prompt tokens and observation tokens are 0, generated tokens 1
    action_masks = [[0] * min(n, 2) + [rng.randint(0, 1) for _ in range(n - 2)] for n in lengths]
    return sequences, belief_points, answers, action_masks


def assert_close(actual: list[list[float]], expected: list[list[float]], tolerance: float) -> None:
    assert [len(row) for row in actual] == [len(row) for row in expected]
    for i, (got, want) in enumerate(zip(actual, expected, strict=True)):
        assert got == pytest.approx(want, abs=tolerance), f"trajectory {i}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_naive_per_point_passes(family, dtype):
    model = tiny_model(family, dtype)
    sequences, belief_points, answers, action_masks = make_batch()
    result = score_trajectories(
        model, sequences, belief_points, PROBE, answers, action_masks=action_masks, temperature=0.7
    )
    assert_close(
        result.beliefs, naive_beliefs(model, sequences, belief_points, PROBE, answers), TOLERANCE[dtype]
    )
    for i, ids in enumerate(sequences):
        expected = naive_token_log_probs(model, ids, temperature=0.7, action_mask=action_masks[i])
        assert result.token_log_probs[i].dtype == torch.float32
        assert result.token_log_probs[i].shape == (len(ids),)
        torch.testing.assert_close(result.token_log_probs[i], expected, atol=TOLERANCE[dtype], rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_beliefs_only_match_naive(family):
    model = tiny_model(family)
    sequences, belief_points, answers, _ = make_batch(seed=1)
    beliefs = score_beliefs(model, sequences, belief_points, PROBE, answers)
    assert_close(beliefs, naive_beliefs(model, sequences, belief_points, PROBE, answers), 1e-4)


def test_alias_reduce_first_scores_only_the_first_alias():
    model = tiny_model("qwen2")
    sequences, belief_points, answers, _ = make_batch(seed=2)
    first = naive_beliefs(model, sequences, belief_points, PROBE, answers, alias_reduce="first")
    best = naive_beliefs(model, sequences, belief_points, PROBE, answers, alias_reduce="max")
    # the data must tell the two apart: some later alias beats the first one somewhere
    assert any(
        b > f + 1e-2
        for row_b, row_f in zip(best, first, strict=True)
        for b, f in zip(row_b, row_f, strict=True)
    )
    assert_close(
        score_beliefs(model, sequences, belief_points, PROBE, answers, alias_reduce="first"), first, 1e-4
    )
    assert_close(
        score_beliefs(model, sequences, belief_points, PROBE, answers, alias_reduce="max"), best, 1e-4
    )


@pytest.mark.parametrize("token_budget", [16, 100])
def test_token_budget_splits_the_work_and_gives_the_same_numbers(token_budget):
    model = tiny_model("llama")
    sequences, belief_points, answers, action_masks = make_batch(seed=3)
    calls = []  # [rows, new tokens] of every decoder forward
    hook = model.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        split = score_trajectories(
            model,
            sequences,
            belief_points,
            PROBE,
            answers,
            action_masks=action_masks,
            token_budget=token_budget,
            logits_chunk=5,
        )
    finally:
        hook.remove()
    whole = score_trajectories(model, sequences, belief_points, PROBE, answers, action_masks=action_masks)

    # the 250-token trajectory alone needs ceil(249 / budget) chunks (it runs to its last point, 250)
    assert len(calls) >= -(-250 // token_budget)
    assert all(rows * tokens <= token_budget for rows, tokens in calls), (
        calls
    )  # every probe block (<= 8) fits
    assert_close(split.beliefs, whole.beliefs, 1e-5)
    for got, want in zip(split.token_log_probs, whole.token_log_probs, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert_close(split.beliefs, naive_beliefs(model, sequences, belief_points, PROBE, answers), 1e-4)


def test_without_belief_points_no_probe_work_is_done():
    """GRPO/PPO call: answers=None and no belief points give empty beliefs from one trajectory pass per batch."""
    model = tiny_model("qwen2")
    sequences, _, _, action_masks = make_batch(seed=4)
    calls = []
    hook = model.get_decoder().register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        result = score_trajectories(
            model, sequences, [[] for _ in sequences], PROBE, None, action_masks=action_masks
        )
    finally:
        hook.remove()
    assert result.beliefs == [[] for _ in sequences]
    assert len(calls) == 1  # all seven fit the default budget: one batch, one trajectory pass, no probe pass
    for i, ids in enumerate(sequences):
        expected = naive_token_log_probs(model, ids, action_mask=action_masks[i])
        torch.testing.assert_close(result.token_log_probs[i], expected, atol=1e-4, rtol=0)


def test_accepts_tensors_and_restores_training_mode():
    model = tiny_model("qwen2").train()
    sequences, belief_points, answers, _ = make_batch(seed=5)
    beliefs = score_beliefs(
        model,
        [torch.tensor(ids) for ids in sequences],
        belief_points,
        torch.tensor(PROBE),
        [[torch.tensor(a) for a in aliases] for aliases in answers],
    )
    assert model.training
    model.eval()
    assert_close(beliefs, naive_beliefs(model, sequences, belief_points, PROBE, answers), 1e-4)


def test_test_model_is_sensitive_to_positions():
    """Guards the tolerances above: probe positions off by one (the reference code's RoPE fault, in small)
    change a belief by far more than 1e-4, so a scorer with wrong position_ids fails the tests."""
    model = tiny_model("qwen2")
    sequences, _, answers, _ = make_batch()
    ids, p, alias = sequences[2], 97, answers[2][1]
    tokens = torch.tensor([ids[:p] + PROBE + alias])
    shifted = torch.arange(tokens.shape[1])[None].clone()
    shifted[0, p:] += 1  # the probe block one position too far
    with torch.no_grad():
        log_probs = model(tokens, position_ids=shifted).logits[0].float().log_softmax(-1)
    start = p + len(PROBE) - 1
    wrong = sum(log_probs[start + j, alias[j]].item() for j in range(len(alias))) / len(alias)
    assert abs(wrong - naive_belief(model, ids, p, PROBE, alias)) > 1e-2


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("token_budget", [16, 10**4])
def test_empty_probe_scores_the_answer_right_after_the_context(family, token_budget):
    """probe = []: a_1 is predicted by the context's last token (ids[p-1], from the trajectory pass), the rest
    by the probe block answer[:-1]; one-token answers need no probe pass. Equal to one plain forward per point."""
    model = tiny_model(family)
    sequences, belief_points, answers, action_masks = make_batch(seed=6)
    answers[0] = [[5], [11, 12]]  # a one-token alias beside a longer one
    answers[5] = [[9]]  # the one-token trajectory, with a one-token answer only
    result = score_trajectories(
        model,
        sequences,
        belief_points,
        [],
        answers,
        action_masks=action_masks,
        token_budget=token_budget,
        logits_chunk=3,
    )
    expected = naive_beliefs(model, sequences, belief_points, [], answers)
    assert_close(result.beliefs, expected, 1e-4)
    # the empty probe changes the numbers: the same call with a probe gives other beliefs
    with_probe = naive_beliefs(model, sequences, belief_points, PROBE, answers)
    assert abs(expected[2][0] - with_probe[2][0]) > 1e-2
    for i, ids in enumerate(sequences):
        torch.testing.assert_close(
            result.token_log_probs[i],
            naive_token_log_probs(model, ids, action_mask=action_masks[i]),
            atol=1e-4,
            rtol=0,
        )


def test_empty_probe_with_one_token_answers_runs_no_probe_pass():
    model = tiny_model("qwen2")
    sequences, belief_points, _, _ = make_batch(seed=7)
    answers = [[[5], [6]] for _ in sequences]
    calls = []
    hook = model.get_decoder().register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        beliefs = score_beliefs(model, sequences, belief_points, [], answers)
    finally:
        hook.remove()
    assert len(calls) == 1  # the trajectory pass only
    assert_close(beliefs, naive_beliefs(model, sequences, belief_points, [], answers), 1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_random_layouts_match_naive(seed):
    """Random lengths, points (repeats allowed), aliases, masks, temperature and budget, both families."""
    rng = random.Random(100 + seed)
    model = tiny_model(FAMILIES[seed % 2])
    n = rng.randint(1, 4)
    sequences = [[rng.randrange(VOCAB) for _ in range(rng.randint(1, 120))] for _ in range(n)]
    belief_points = [[rng.randint(1, len(ids)) for _ in range(rng.randint(0, 4))] for ids in sequences]
    answers = [
        [[rng.randrange(VOCAB) for _ in range(rng.randint(1, 5))] for _ in range(rng.randint(1, 3))]
        for _ in range(n)
    ]
    action_masks = [[rng.randint(0, 1) for _ in ids] for ids in sequences]
    probe = [rng.randrange(VOCAB) for _ in range(rng.randint(0, 4))]  # empty: log p(answer | context)
    temperature = rng.choice([0.5, 1.0, 1.3])
    result = score_trajectories(
        model,
        sequences,
        belief_points,
        probe,
        answers,
        action_masks=action_masks,
        temperature=temperature,
        token_budget=rng.choice([9, 64, 10**4]),
    )
    assert_close(result.beliefs, naive_beliefs(model, sequences, belief_points, probe, answers), 1e-4)
    for i, ids in enumerate(sequences):
        expected = naive_token_log_probs(model, ids, temperature=temperature, action_mask=action_masks[i])
        torch.testing.assert_close(result.token_log_probs[i], expected, atol=1e-4, rtol=0)

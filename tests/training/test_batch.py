"""Mini-batch planning and the exact loss weighting of micro-batches across ranks."""

import pytest
import torch

from igpo_rlhf.training.batch import (
    Experience,
    MiniBatch,
    grad_accum_steps,
    loss_weight,
    micro_batches,
    pad_experiences,
    per_rank_minibatch_size,
    split_for_update,
)


def exp(length: int, actions: int, fill: float = 0.0) -> Experience:
    mask = torch.zeros(length, dtype=torch.bool)
    mask[length - actions :] = True
    return Experience(
        input_ids=torch.arange(length),
        action_mask=mask,
        old_log_probs=torch.full((length,), -1.0),
        advantages=torch.full((length,), fill),
    )


def test_pad_experiences_right_pads_every_field():
    batch = pad_experiences([exp(3, 2, 1.0), exp(5, 1, 2.0)])
    assert batch.input_ids.tolist() == [[0, 1, 2, 0, 0], [0, 1, 2, 3, 4]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch.action_mask.tolist() == [[False, True, True, False, False], [False] * 4 + [True]]
    assert batch.advantages.tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0], [2.0] * 5]
    assert batch.ref_log_probs is None and batch.old_values is None and batch.returns is None
    mixed = [exp(3, 1), exp(3, 1)]
    mixed[0].ref_log_probs = torch.zeros(3)
    with pytest.raises(ValueError, match="ref_log_probs is set on some rows"):
        pad_experiences(mixed)


def test_micro_batches_group_similar_lengths():
    exps = [exp(n, 1) for n in (9, 2, 7, 3, 8)]
    micros = micro_batches(exps, 2)
    assert [[e.num_tokens for e in m] for m in micros] == [[2, 3], [7, 8], [9]]


def test_loss_weights_sum_to_the_exact_token_mean():
    """Σ over micro-batches and ranks of weight · (micro token mean) / (grad_accum · world) = global token mean."""
    values = {
        0: [1.0, 2.0, 3.0],
        1: [10.0],
        2: [4.0, 4.0],
        3: [7.0, 0.0, 5.0, 1.0],
    }  # per-rollout action values
    exps = [exp(6, len(v)) for v in values.values()]
    world, grad_accum = 2, 2
    ranks = [[0, 1], [2, 3]]  # rollout indices per rank
    total_actions = sum(len(v) for v in values.values())  # 10
    total = 0.0
    for rank in ranks:
        batch = MiniBatch([exps[k] for k in rank], total_actions=total_actions, total_sequences=4)
        for k in rank:  # one rollout per micro-batch
            micro_mean = sum(values[k]) / len(values[k])
            weight = loss_weight([exps[k]], batch, "token_mean", grad_accum, world)
            total += weight * micro_mean / (grad_accum * world)
    all_values = [x for v in values.values() for x in v]
    assert total == pytest.approx(sum(all_values) / len(all_values))  # 37 / 10

    seq_total = 0.0
    for rank in ranks:
        batch = MiniBatch([exps[k] for k in rank], total_actions=total_actions, total_sequences=4)
        for k in rank:
            seq_total += loss_weight([exps[k]], batch, "seq_mean", grad_accum, world) * (
                sum(values[k]) / len(values[k])
            )
    seq_total /= grad_accum * world
    assert seq_total == pytest.approx((2.0 + 10.0 + 4.0 + 13.0 / 4) / 4)


def test_split_for_update_equal_counts_balanced_tokens_and_seeded_epochs():
    lengths = [10, 20, 30, 40, 50, 60, 70, 80]
    exps = [exp(n, 1) for n in lengths]
    plan = split_for_update(exps, epochs=1, mini_batches=1, world_size=2, seed=0, step=1)
    assert [len(p) for p in plan] == [1, 1]
    shares = [sorted(e.num_tokens for e in p[0].experiences) for p in plan]
    assert sorted(x for s in shares for x in s) == lengths
    assert [len(s) for s in shares] == [4, 4]
    assert sum(shares[0]) == sum(shares[1]) == 180  # 360 tokens split evenly
    assert plan[0][0].total_actions == 8 and plan[0][0].total_sequences == 8

    two = split_for_update(exps, epochs=2, mini_batches=2, world_size=1, seed=3, step=5)
    assert len(two[0]) == 4  # 2 epochs x 2 mini-batches
    for epoch in (0, 1):
        members = two[0][2 * epoch].experiences + two[0][2 * epoch + 1].experiences
        assert sorted(e.num_tokens for e in members) == lengths  # each epoch visits every rollout once
    again = split_for_update(exps, epochs=2, mini_batches=2, world_size=1, seed=3, step=5)
    assert [[e.num_tokens for e in b.experiences] for b in two[0]] == [
        [e.num_tokens for e in b.experiences] for b in again[0]
    ]


def test_sizes_must_divide():
    assert per_rank_minibatch_size(32, 2, 4) == 4
    assert grad_accum_steps(5, 2) == 3
    with pytest.raises(
        ValueError, match=r"12 rollouts per step must divide evenly into train.mini_batches \(1\) x"
    ):
        per_rank_minibatch_size(12, 1, 5)

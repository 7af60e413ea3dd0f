"""Token log-probs and entropies against a slow per-position loop; length batching."""

import math

import pytest
import torch

from igpo_rlhf.training.logprobs import length_batches, pad_right, token_entropy, token_log_probs


def test_token_log_probs_and_entropy_match_a_per_position_loop():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)  # [B, L, V]
    ids = torch.randint(0, 7, (2, 5), generator=g)
    for temperature in (1.0, 0.7):
        lp = token_log_probs(logits, ids, temperature=temperature)
        ent = token_entropy(logits, ids, temperature=temperature)
        for b in range(2):
            assert lp[b, 0] == 0 and ent[b, 0] == 0  # token 0 has no context
            for j in range(1, 5):
                z = [float(x) / temperature for x in logits[b, j - 1]]  # the distribution token j came from
                log_norm = math.log(sum(math.exp(v) for v in z))
                assert float(lp[b, j]) == pytest.approx(z[int(ids[b, j])] - log_norm, abs=1e-5)
                p = [math.exp(v - log_norm) for v in z]
                assert float(ent[b, j]) == pytest.approx(-sum(q * math.log(q) for q in p), abs=1e-5)


def test_bad_shapes_and_temperature():
    with pytest.raises(ValueError, match=r"expected \[B, L, V\] and \[B, L\]"):
        token_log_probs(torch.zeros(2, 5, 7), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature=0"):
        token_log_probs(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), temperature=0)


def test_length_batches_respect_the_budget_and_cover_every_row():
    lengths = [5, 40, 12, 7, 40, 3, 100]
    batches = length_batches(lengths, token_budget=80)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 80
    assert [6] in batches  # longer than the budget: a batch of its own
    assert pad_right([torch.tensor([1, 2]), torch.tensor([3])], -1).tolist() == [[1, 2], [3, -1]]

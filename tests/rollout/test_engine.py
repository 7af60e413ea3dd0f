"""HFEngine on a tiny random Qwen2: exact sampled ids per row, per-row stops and budgets, seeding, weights.

Expected outputs are computed independently: each row generated alone (no padding, no stop rule, one long
greedy run), then cut where a stop string first appears in its decoded prefix, found by scanning prefixes.
"""

from __future__ import annotations

import copy

import pytest
import torch

from igpo_rlhf.rollout.engine import Generation, HFEngine
from tests.rollout.tiny import make_model, make_tokenizer

GREEDY = {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "seed": 0}


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def engine(tok):
    return HFEngine(make_model(tok), tok)


@pytest.fixture(scope="module")
def contexts(tok):
    return [
        tok.encode("Question: who wrote the book?"),
        tok.encode("Paris"),
        tok.encode("The quick brown fox jumps over the lazy dog. Doc 2(Title: Fox)"),
    ]


def _alone(engine, ctx, n):
    """Reference: the row on its own, greedy, n tokens, no stop strings, EOS never stops it."""
    model = engine.model
    ids = torch.tensor([ctx])
    out = []
    with torch.no_grad():
        for _ in range(n):  # slow and obvious: a full forward pass per token, no cache, no padding
            logits = model(input_ids=ids).logits[0, -1]
            nxt = int(logits.argmax())
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


def _first_stop(tok, ids, stops):
    """Smallest k such that a stop string occurs in decode(ids[:k]); None if none does."""
    for k in range(1, len(ids) + 1):
        if any(s in tok.decode(ids[:k]) for s in stops):
            return k
    return None


def test_batched_greedy_rows_equal_rows_generated_alone(engine, contexts):
    budgets = [12, 5, 20]
    gens = engine.generate(contexts, max_new_tokens=budgets, stop_strings=[], **GREEDY)
    for ctx, budget, gen in zip(contexts, budgets, gens, strict=True):
        ref = _alone(engine, ctx, budget)
        assert gen == Generation(token_ids=ref, finish="length")


def test_rows_stop_right_after_their_stop_string(engine, tok, contexts):
    refs = [_alone(engine, ctx, 30) for ctx in contexts]
    # A stop string taken from the middle of row 0's own output (it spans characters of several tokens).
    text0 = tok.decode(refs[0])
    stop = text0[len(text0) // 2 : len(text0) // 2 + 3]
    stops = [stop, "</nothing>"]
    gens = engine.generate(contexts, max_new_tokens=[30, 30, 30], stop_strings=stops, **GREEDY)
    found = 0
    for ref, gen in zip(refs, gens, strict=True):
        k = _first_stop(tok, ref, stops)
        if k is None:
            assert gen == Generation(token_ids=ref, finish="length")
        else:
            found += 1
            assert gen == Generation(token_ids=ref[:k], finish="stop")
            assert stop in tok.decode(gen.token_ids) and stop not in tok.decode(gen.token_ids[:-1])
    assert found >= 1


def test_rows_stop_at_eos(tok, contexts):
    model = make_model(tok)
    ref_engine = HFEngine(model, tok)
    ref = _alone(ref_engine, contexts[2], 25)
    eos_id = ref[6]  # make the 7th greedy token of row 2 an EOS token
    model2 = copy.deepcopy(model)
    model2.generation_config.eos_token_id = [eos_id]
    eng = HFEngine(model2, tok)
    gens = eng.generate(contexts, max_new_tokens=[25, 25, 25], stop_strings=[], **GREEDY)
    for ctx, gen in zip(contexts, gens, strict=True):
        row_ref = _alone(ref_engine, ctx, 25)
        eos_positions = [i for i, t in enumerate(row_ref) if t in (eos_id, tok.eos_token_id)]
        if eos_positions:
            assert gen == Generation(token_ids=row_ref[: eos_positions[0] + 1], finish="eos")
        else:
            assert gen == Generation(token_ids=row_ref, finish="length")
    assert gens[2].finish == "eos" and len(gens[2].token_ids) <= 7


def test_model_generation_config_does_not_change_sampling(tok, contexts):
    """Only our temperature/top_p/top_k apply: a repetition penalty or top_k in the model's config would
    make the sampled tokens come from another distribution than π_θ."""
    plain = HFEngine(make_model(tok), tok)
    model = make_model(tok)
    model.generation_config.repetition_penalty = 5.0
    model.generation_config.top_k = 1
    tweaked = HFEngine(model, tok)
    kwargs = {"max_new_tokens": [15] * 3, "stop_strings": [], "temperature": 1.0, "top_p": 1.0, "top_k": -1}
    assert plain.generate(contexts, seed=7, **kwargs) == tweaked.generate(contexts, seed=7, **kwargs)


def test_seeded_sampling_is_reproducible_and_leaves_global_rng_alone(engine, contexts):
    kwargs = {"max_new_tokens": [15] * 3, "stop_strings": [], "temperature": 1.0, "top_p": 1.0, "top_k": -1}
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = engine.generate(contexts, seed=11, **kwargs)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = engine.generate(contexts, seed=11, **kwargs)
    c = engine.generate(contexts, seed=12, **kwargs)
    assert a == b
    assert a != c


def test_top_k_one_is_greedy(engine, contexts):
    sampled = engine.generate(
        contexts, max_new_tokens=[10] * 3, stop_strings=[], temperature=1.0, top_p=1.0, top_k=1, seed=3
    )
    greedy = engine.generate(contexts, max_new_tokens=[10] * 3, stop_strings=[], **GREEDY)
    assert sampled == greedy


@pytest.mark.parametrize(
    "contexts, budgets, extra, message",
    [
        ([], [], {}, "contexts is empty"),
        ([[1, 2]], [3, 4], {}, "max_new_tokens has 2 entries for 1 contexts"),
        ([[1], []], [3, 3], {}, r"contexts\[1\] is empty"),
        ([[1]], [0], {}, r"max_new_tokens\[0\]=0"),
        ([[1]], [3], {"temperature": -1.0}, "temperature=-1.0"),
        ([[1]], [3], {"top_p": 0.0}, "top_p=0.0"),
        ([[1]], [3], {"top_k": 0}, "top_k=0"),
    ],
)
def test_bad_arguments(engine, contexts, budgets, extra, message):
    kwargs = {**GREEDY, **extra}
    with pytest.raises(ValueError, match=message):
        engine.generate(contexts, max_new_tokens=budgets, stop_strings=[], **kwargs)


def test_top_k_minus_one_samples_the_whole_vocabulary(tok):
    """top_k=-1 samples from π itself: with a nearly flat next-token distribution over the 400-token
    vocabulary, 800 one-token samples hit far more than 50 distinct tokens (a silent top-50 default would cap
    them at 50, as top_k=50 does)."""
    model = make_model(tok)
    with torch.no_grad():  # tiny, distinct logits: nearly uniform, and no ties at a top-k boundary
        model.lm_head.weight.copy_(
            1e-3 * torch.randn(model.lm_head.weight.shape, generator=torch.Generator().manual_seed(0))
        )
    eng = HFEngine(model, tok)
    out = eng.generate(
        [tok.encode("Paris")] * 800, max_new_tokens=[1] * 800, stop_strings=[], temperature=1.0, top_p=1.0,
        top_k=-1, seed=5,
    )  # fmt: skip
    assert len({g.token_ids[0] for g in out}) > 100
    capped = eng.generate(
        [tok.encode("Paris")] * 800, max_new_tokens=[1] * 800, stop_strings=[], temperature=1.0, top_p=1.0,
        top_k=50, seed=5,
    )  # fmt: skip
    assert len({g.token_ids[0] for g in capped}) <= 50

"""Answer-probe and gold-alias token ids, as the belief scorer reads them, with real tokenizers."""

import pytest
from tokenizers import Tokenizer, models, trainers
from transformers import PreTrainedTokenizerFast

from igpo_rlhf.scoring.probe import alias_token_ids, probe_token_ids
from igpo_rlhf.world.tiny_model import PROTOCOL_TAGS, train_tokenizer

TEXTS = [
    "<think> The capital is Paris. </think>\n<answer> Paris </answer>",
    "Rome and Paris are cities.",
] * 30


@pytest.fixture(scope="module")
def tok():
    """Our tiny model's tokenizer recipe: byte-level BPE, Qwen2 split regex, protocol tags as added tokens."""
    return train_tokenizer(TEXTS, 300, PROTOCOL_TAGS["search_r1"])


def test_aliases_are_the_ids_the_policy_writes_after_the_probe(tok):
    [probe] = probe_token_ids(tok, "<answer>")
    turn = tok.encode(
        "<think> The capital is Paris. </think>\n<answer> Paris </answer>", add_special_tokens=False
    )
    at = turn.index(probe) + 1
    [paris, rome] = alias_token_ids(tok, "<answer>", ["Paris", "Rome"])
    assert turn[at : at + len(paris)] == paris  # exactly the tokens that follow <answer> in a written answer
    assert paris == tok.encode(
        " Paris", add_special_tokens=False
    )  # the space belongs to the answer's first token
    assert paris != tok.encode("Paris", add_special_tokens=False)
    assert rome == tok.encode("<answer> Rome", add_special_tokens=False)[1:]


def test_duplicate_aliases_are_scored_once_and_empty_probe_is_an_error(tok):
    assert alias_token_ids(tok, "<answer>", ["Paris", "Paris", "Rome"]) == alias_token_ids(
        tok, "<answer>", ["Paris", "Rome"]
    )
    with pytest.raises(ValueError, match="answer_probe='' tokenises to no ids"):
        probe_token_ids(tok, "")


def test_fallback_when_the_tokenizer_merges_across_the_probe():
    """A BPE without pre-tokenizer learns 'A: Paris' as one token: the probe's ids are then not a prefix of
    the joint ids, and the alias is tokenised on its own after the separator."""
    raw = Tokenizer(models.BPE())
    raw.train_from_iterator(
        ["A: Paris A: Rome A: Paris is"] * 50,
        trainer=trainers.BpeTrainer(vocab_size=300, show_progress=False),
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=raw)
    joint = fast.encode("A: Paris", add_special_tokens=False)
    probe = probe_token_ids(fast, "A:")
    assert joint[: len(probe)] != probe  # the merge this test is about
    assert alias_token_ids(fast, "A:", ["Paris"]) == [fast.encode(" Paris", add_special_tokens=False)]

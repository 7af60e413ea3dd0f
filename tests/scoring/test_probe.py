"""Answer-probe and gold-alias token ids, as the belief scorer reads them, with real tokenizers."""

import pytest
from tokenizers import Tokenizer, models, trainers
from transformers import PreTrainedTokenizerFast

from igpo_rlhf.config import PAPER_ANSWER_PROBE, prompt_answer_separator
from igpo_rlhf.scoring.probe import alias_token_ids, answer_separator, probe_token_ids
from igpo_rlhf.world.tiny_model import PROTOCOL_TAGS, train_tokenizer

TEXTS = [
    "<think> The capital is Paris. </think>\n<answer> Paris </answer>",
    "<think> The capital is Paris. </think>\n<answer>\nParis\n</answer>",
    "Rome and Paris are cities.",
] * 30


class _NoSpace:
    """A tokenizer that drops whitespace (stands in for one whose vocabulary has no id for a lone space)."""

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text if not c.isspace()]


_NO_SPACE_TOKENIZER = _NoSpace()


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


def test_duplicate_aliases_are_scored_once_and_an_empty_probe_scores_the_bare_answer(tok):
    assert alias_token_ids(tok, "<answer>", ["Paris", "Paris", "Rome"]) == alias_token_ids(
        tok, "<answer>", ["Paris", "Rome"]
    )
    assert probe_token_ids(tok, "") == []
    # nothing precedes the answer inside the probe, so no separator: the answer's own ids
    assert alias_token_ids(tok, "", ["Paris"]) == [tok.encode("Paris", add_special_tokens=False)]
    with pytest.raises(ValueError, match="answer_probe=' ' tokenises to no ids"):
        probe_token_ids(_NO_SPACE_TOKENIZER, " ")


@pytest.mark.parametrize(
    "prompt, written, separator",
    [
        ("Answer inside <answer> and </answer>. For example, <answer> Beijing </answer>. {question}",
         "<think> The capital is Paris. </think>\n<answer> Paris </answer>", " "),
        ("Answer in this format:\n<answer>\nBeijing\n</answer>\n{question}",
         "<think> The capital is Paris. </think>\n<answer>\nParis\n</answer>", "\n"),
    ],
    ids=["space", "newline"],
)  # fmt: skip
def test_the_separator_follows_the_prompts_answer_format(tok, prompt, written, separator):
    """The prompt's example fixes how the model writes an answer; the alias ids are the ids that follow the
    probe in an answer written that way (tokenised here as the whole turn)."""
    assert answer_separator(None, None, prompt) == separator
    [probe] = probe_token_ids(tok, "<answer>")
    turn = tok.encode(written, add_special_tokens=False)
    at = turn.index(probe) + 1
    [paris] = alias_token_ids(tok, "<answer>", ["Paris"], separator=answer_separator(None, prompt))
    assert turn[at : at + len(paris)] == paris
    assert tok.decode(paris) == separator + "Paris"
    other = "\n" if separator == " " else " "
    assert alias_token_ids(tok, "<answer>", ["Paris"], separator=other) != [paris]  # the format matters


def test_separator_defaults_and_the_papers_probe(tok):
    assert answer_separator(None, "Question: {question}") == " "  # no example in the prompt
    assert answer_separator("\n", "For example, <answer> Beijing </answer>") == "\n"  # the key wins
    assert prompt_answer_separator("<answer></answer> <answer>\n\nX</answer>") == "\n\n"  # skips empty tags
    # the reference code's text: the probe closes the reasoning, the answer follows on its own line
    written = "<think> hm" + PAPER_ANSWER_PROBE + "\nParis\n</answer>"
    probe = probe_token_ids(tok, PAPER_ANSWER_PROBE)
    turn = tok.encode(written, add_special_tokens=False)
    start = next(i for i in range(len(turn)) if turn[i : i + len(probe)] == probe) + len(probe)
    [paris] = alias_token_ids(tok, PAPER_ANSWER_PROBE, ["Paris"], separator="\n")
    assert turn[start : start + len(paris)] == paris


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

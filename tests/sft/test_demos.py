"""Demonstrations from real QA data (igpo_rlhf.sft.demos) and their tokens (igpo_rlhf.sft.loop.encode_demo).

The retrieval tests use the proxy's BM25 backend over a small corpus written here. The token test uses the
real SmolLM2 tokenizer and chat template (no weights are run; marked real_model, as it needs the converted
model) and checks the tokens against the chat template's own rendering of the whole trajectory."""

from __future__ import annotations

import pytest

from igpo_rlhf.config import load_config
from igpo_rlhf.models.loading import load_tokenizer
from igpo_rlhf.rollout.protocols import make_protocol
from igpo_rlhf.rollout.trajectory import PromptItem
from igpo_rlhf.sft.demos import gold_in_passages, qa_demos, question_key
from igpo_rlhf.sft.loop import encode_demo
from igpo_rlhf.world.demos import BM25Search
from tests.models.smollm2 import ROOT, smollm2_dir

CORPUS = [
    {"id": "1", "title": "Hamlet", "text": "Hamlet is a tragedy written by William Shakespeare around 1600."},
    {
        "id": "2",
        "title": "Eiffel Tower",
        "text": "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
    },
    {"id": "3", "title": "Nile", "text": "The Nile is a major north-flowing river in northeastern Africa."},
    {"id": "4", "title": "Mount Fuji", "text": "Mount Fuji is the highest mountain in Japan, near Tokyo."},
]
ITEMS = [
    PromptItem("Who wrote the tragedy Hamlet?", ["William Shakespeare", "Shakespeare"]),
    PromptItem("In which city is the Eiffel Tower?", ["Paris"]),
    PromptItem("Which river flows through Cairo?", ["the Nile"]),  # retrieved under its article-free form
    PromptItem("What is the tallest mountain in Japan?", ["Fuji-san"]),  # the alias is not in the passage
    PromptItem("How long is the Great Wall of China?", ["21,196 km"]),  # no passage holds it
]


@pytest.fixture(scope="module")
def search() -> BM25Search:
    return BM25Search(CORPUS)


def test_the_gold_is_found_in_normalised_passages_best_first():
    hits = [CORPUS[2], CORPUS[0]]
    assert gold_in_passages(["The Shakespeare!"], hits) == ("The Shakespeare!", CORPUS[0])
    assert gold_in_passages(["nile"], hits) == ("nile", CORPUS[2])
    assert gold_in_passages(["Shakes"], hits) is None  # whole words only
    assert gold_in_passages(["a"], hits) is None  # an alias that normalises to nothing matches nothing


def test_questions_whose_passages_miss_the_answer_are_dropped(search):
    demos, stats = qa_demos(ITEMS, search, top_k=1, max_demos=10, seed=0)
    assert sorted(d["question"] for d in demos) == sorted(i.question for i in ITEMS[:3])
    assert stats | {"retrieval_hit_rate": None} == {
        "demos": 3, "questions_tried": 5, "dropped_answer_not_retrieved": 2, "skipped_held_out": 0,
        "retrieval_hit_rate": None, "search_top_k": 1,
    }  # fmt: skip
    assert stats["retrieval_hit_rate"] == 0.6
    hamlet = next(d for d in demos if d["question"].startswith("Who wrote"))
    [search_step, answer_step] = hamlet["steps"]
    assert search_step["query"] == "Who wrote the tragedy Hamlet?" and search_step["results"][0]["id"] == "1"
    assert answer_step == {"think": "The passage about Hamlet answers it.", "answer": "William Shakespeare"}


def test_held_out_questions_and_the_demo_budget(search):
    held_out = {question_key("in which city is the Eiffel tower")}
    demos, stats = qa_demos(ITEMS, search, top_k=1, max_demos=10, seed=0, exclude=held_out)
    assert "In which city is the Eiffel Tower?" not in [d["question"] for d in demos]
    assert stats["skipped_held_out"] == 1 and stats["demos"] == 2
    two, _ = qa_demos(ITEMS, search, top_k=1, max_demos=2, seed=0)
    assert len(two) == 2
    with pytest.raises(ValueError, match="max_demos=0"):
        qa_demos(ITEMS, search, top_k=1, max_demos=0, seed=0)


@pytest.mark.real_model  # the real tokenizer and chat template (no weights are run)
@pytest.mark.parametrize("protocol_name", ["search_r1", "tool_call"])
def test_demo_tokens_are_the_chat_template_trajectory_with_loss_on_the_turns(search, protocol_name):
    tok = load_tokenizer(smollm2_dir())
    if protocol_name == "search_r1":
        cfg = load_config(ROOT / "configs" / "smollm2_wiki.yaml")
    else:  # the tool_call protocol's default prompt
        cfg = load_config(None, ["rollout.protocol=tool_call", "rollout.use_chat_template=true"])
    protocol = make_protocol(cfg.rollout, tok, "<answer>")
    [demo], _ = qa_demos(ITEMS[:1], search, top_k=2, max_demos=1, seed=0)
    ids, labels = encode_demo(demo, protocol, tok, max_obs_tokens=400)
    hits = demo["steps"][0]["results"]
    question = "Who wrote the tragedy Hamlet?"
    user = cfg.rollout.prompt_template.replace("{question}", question)
    if protocol_name == "search_r1":
        turn1 = f"<think> I need to look this up. </think>\n<search> {question} </search>"
        obs = "\n\n<information>" + "".join(
            f"Doc {k + 1}(Title: {h['title']}) {h['text']}\n" for k, h in enumerate(hits)
        )
        obs += "</information>\n\n"
        messages = [{"role": "user", "content": user}]
    else:
        call = '{"name": "search", "arguments": {"query_list": ["' + question + '"]}}'
        turn1 = f"<think> I need to look this up. </think>\n<tool_call>\n{call}\n</tool_call>"
        passages = "".join(f"Doc {k + 1}(Title: {h['title']}) {h['text']}\n" for k, h in enumerate(hits))
        obs = f"<|im_end|>\n<|im_start|>tool\n{passages.rstrip()}<|im_end|>\n<|im_start|>assistant\n"
        messages = [{"role": "system", "content": protocol.system_prompt}, {"role": "user", "content": user}]
    turn2 = "<think> The passage about Hamlet answers it. </think>\n<answer> William Shakespeare </answer>"
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # the whole trajectory as text, and the EOS that ends the assistant message
    assert tok.decode(ids, skip_special_tokens=False) == prompt + turn1 + obs + turn2 + "<|im_end|>"
    # loss exactly on the two turns and the EOS: the tokens a rollout would sample
    trained = [i for i, y in zip(ids, labels, strict=True) if y != -100]
    assert trained == tok.encode(turn1, add_special_tokens=False) + tok.encode(
        turn2, add_special_tokens=False
    ) + [2]
    assert all(y in (-100, i) for i, y in zip(ids, labels, strict=True))
    # each segment tokenised on its own, as the rollout loop appends them
    assert ids[: len(protocol.prompt_ids(question))] == tok.encode(prompt, add_special_tokens=False)

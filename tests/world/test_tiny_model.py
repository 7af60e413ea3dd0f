"""The tiny demo model: tokenizer reload, loss mask of the warm start, save/reload, sampled searches.

A reduced world and a very short warm start keep this fast; the full-size quality figures are measured
by `python -m igpo_rlhf.world.model_check` (see the data engineer's report / bench notes).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from igpo_rlhf.config import load_config
from igpo_rlhf.rollout.engine import HFEngine
from igpo_rlhf.rollout.protocols import make_protocol
from igpo_rlhf.sft.demos import render_demo
from igpo_rlhf.world.tiny_model import PROTOCOL_TAGS, encode_demo, main, train_tokenizer

SETS = [
    "data.world.seed=3",
    "data.world.n_people=16",
    "data.world.n_train=6",
    "data.world.n_test=12",
    "data.world.n_demos=60",
    "data.world.max_hops=2",
]
FAST = ["--vocab-size", "700", "--hidden-size", "64", "--intermediate-size", "192", "--steps", "200",
        "--log-every", "50"]  # fmt: skip
TEXTS = [
    "Zumkeal Teamdrear was born in Poupis in 1920.",
    "<think> I need to find where Zumkeal Teamdrear was born. </think>\n<search> Zumkeal Teamdrear born </search>",
    "\n\n<information>Doc 1(Title: Poupis) Poupis is a city in the Duchy of Gunre.\n</information>\n\n",
]


def _overrides(world_dir: Path) -> list[str]:
    return [a for s in [*SETS, f"data.world.dir={world_dir}"] for a in ("--set", s)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    world_dir, out = root / "world", root / "model"
    assert main([str(out), *FAST, *_overrides(world_dir)]) == 0  # builds the world too: it is missing
    return world_dir, out


def test_tokenizer_reloads_with_the_same_ids(tmp_path):
    tok = train_tokenizer(TEXTS * 20, 400)
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    probe = "".join(TEXTS) + " don't 12345 Ünïcode\r\n\ttabs  <answer> 1920 </answer><|endoftext|>"
    assert again.encode(probe) == tok.encode(probe)
    assert again.decode(again.encode(probe)) == probe
    for tag in PROTOCOL_TAGS["search_r1"]:
        [tag_id] = again.encode(tag)  # one token each
        assert again.decode([tag_id], skip_special_tokens=True) == tag  # not special: decoding keeps it
    assert again.eos_token == again.pad_token == "<|endoftext|>" and again.encode("<|endoftext|>") == [
        again.eos_token_id
    ]


def test_model_and_tokenizer_reload_from_the_output_directory(tiny):
    _, out = tiny
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "qwen2" and model.config.vocab_size == len(tok)
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (
        64,
        2,
    )  # --hidden-size, default layers
    summary = json.loads((out / "tiny_model.json").read_text(encoding="utf-8"))
    assert summary["demos"] == 60 and summary["final_loss"] < summary["first_loss"] / 2
    ids = torch.tensor([tok.encode(TEXTS[1])])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tok))


def test_warm_start_trains_only_on_generated_turns(tiny):
    world_dir, out = tiny
    tok = AutoTokenizer.from_pretrained(out)
    cfg = load_config(None, SETS)
    protocol = make_protocol(cfg.rollout, tok, "<answer>")
    demo = json.loads((world_dir / "demos.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    segments = render_demo(demo, protocol)
    ids, labels = encode_demo(demo, protocol, tok, cfg.rollout.max_observation_tokens)
    assert len(ids) == len(labels)
    # the trained positions are exactly the turns (and the closing EOS), in order
    trained = [i for i, y in zip(ids, labels, strict=True) if y != -100]
    assert tok.decode(trained) == "".join(t for kind, t in segments if kind == "turn") + tok.eos_token
    assert all(y in (-100, i) for i, y in zip(ids, labels, strict=True))
    # and the whole sequence is the segments tokenised one by one
    expected = []
    for _, text in segments:
        expected += tok.encode(text, add_special_tokens=False)
    assert ids == expected + [tok.eos_token_id]


def test_same_seed_gives_the_same_weights(tiny, tmp_path):
    world_dir, _ = tiny
    short = [a if a != "200" else "4" for a in FAST]  # 4 steps: enough to compare the optimiser's path
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert main([str(out), *short, "--world", str(world_dir), *_overrides(world_dir)]) == 0
    a, b = (AutoModelForCausalLM.from_pretrained(o).state_dict() for o in outs)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sampled_first_turns_are_mostly_well_formed_searches(tiny):
    """Temperature-1 samples of the first turn on held-out questions parse as searches most of the time."""
    world_dir, out = tiny
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    cfg = load_config(None, SETS)
    protocol = make_protocol(cfg.rollout, tok, "<answer>")
    questions = [json.loads(line)["question"] for line in (world_dir / "test.jsonl").read_text().splitlines()]
    engine = HFEngine(model, tok)  # the rollout loop's CPU engine
    prompts = [protocol.prompt_ids(q) for q in questions]
    gens = engine.generate(
        prompts,
        max_new_tokens=[48] * len(prompts),
        stop_strings=protocol.stop_strings,
        temperature=1.0,
        top_p=1.0,
        top_k=-1,
        seed=0,
    )
    kinds = [protocol.parse(tok.decode(g.token_ids)).kind for g in gens]
    assert kinds.count("search") >= 0.75 * len(kinds), kinds


def test_tool_call_protocol_is_refused_with_a_clear_error(tiny, tmp_path, capsys):
    world_dir, _ = tiny
    sets = ["rollout.protocol=tool_call", "rollout.use_chat_template=true"]
    args = [str(tmp_path / "m"), "--world", str(world_dir), *[a for s in sets for a in ("--set", s)]]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "rollout.protocol='tool_call'" in err and "built for protocol search_r1" in err
    assert not (tmp_path / "m").exists()

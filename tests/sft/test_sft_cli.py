"""`igpo sft` end to end with the real model: demonstrations from real questions, a short training run, the
protocol checks, and the saved model (tiny sizes: the full-size figures are in bench/RESULTS.md)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig

from igpo_rlhf.cli import main as igpo
from tests.models.smollm2 import HOTPOTQA, ROOT, SHARED_DATA, smollm2_dir

CONFIG = str(ROOT / "configs" / "smollm2_wiki.yaml")


@pytest.mark.real_model
def test_igpo_sft_trains_checks_and_saves_a_standard_directory(tmp_path, capsys):
    base = smollm2_dir()
    out = tmp_path / "sft"
    # the training questions are HotpotQA's eval set here (the answers are in the shipped corpus); held out: Bamboogle
    argv = ["sft", str(out), "-c", CONFIG, "--set", f"model.path={base}", "--data", str(HOTPOTQA),
            "--check", str(SHARED_DATA / "qa" / "r1searcher_bamboogle.jsonl"), "--steps", "1", "--batch-size", "2",
            "--max-demos", "2", "--check-questions", "1", "--log-every", "1"]  # fmt: skip
    assert igpo(argv) == 0
    printed = capsys.readouterr().out
    assert "sft: 2 demonstrations" in printed and f"saved {out}" in printed
    summary = json.loads((out / "sft.json").read_text(encoding="utf-8"))
    assert summary["demos"] == 2 and summary["options"]["steps"] == 1 and summary["protocol"] == "search_r1"
    assert [c["step"] for c in summary["checks"]] == [0, 1] and all(
        c["rollouts"] == 1 for c in summary["checks"]
    )
    assert summary["trained_tokens_mean"] < summary["demo_tokens_mean"] / 2  # the loss is on the turns only
    # a standard HF directory: the fine-tuned weights differ from the base, everything else is the base's
    tuned = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).state_dict()
    original = AutoModelForCausalLM.from_pretrained(base, local_files_only=True).state_dict()
    assert tuned.keys() == original.keys() and not torch.equal(
        tuned["model.norm.weight"], original["model.norm.weight"]
    )
    assert (
        GenerationConfig.from_pretrained(out).eos_token_id
        == GenerationConfig.from_pretrained(base).eos_token_id
    )
    assert (
        AutoTokenizer.from_pretrained(out).chat_template == AutoTokenizer.from_pretrained(base).chat_template
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "sft"
    ]  # written to a temporary sibling, then renamed
    # an existing OUT is not replaced without --overwrite
    assert igpo(argv) == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err


def test_bad_inputs_are_named(tmp_path, capsys):
    assert igpo(["sft", str(tmp_path / "o"), "-c", CONFIG, "--model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "--model=" in err and "nope" in err and "not a Hugging Face checkpoint directory" in err
    model = tmp_path / "model"  # passes the directory check; nothing gets as far as loading it
    LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
        model
    )
    argv = ["sft", str(tmp_path / "o"), "-c", CONFIG, "--model", str(model)]
    assert igpo([*argv, "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl does not exist" in capsys.readouterr().err
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("taken")
    assert igpo([*argv, "--data", str(HOTPOTQA)]) == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err

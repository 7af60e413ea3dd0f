"""`igpo export CHECKPOINT OUT`: a training checkpoint's policy as a standard Hugging Face model directory.

    igpo export runs/demo/checkpoints/step_00006 runs/demo/export      # then from_pretrained / igpo eval --model

A checkpoint (igpo_rlhf/training/checkpoint.py) holds the policy as a DeepSpeed checkpoint (`policy/ds/`) and
the run's resolved config. The weights are DeepSpeed's fp32 master weights, gathered from every rank's
partition with its own `zero_to_fp32` reader (ZeRO stage 0-3, on CPU, no Ray and no GPU); the architecture,
tokenizer and generation config come from the base model the run started from (`model.path` in the
checkpoint's config.yaml, or `--base`). The result is written atomically and saved in the run's dtype.
(`checkpoints/best/`, written during training, is already such a directory.)
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from igpo_rlhf.models.loading import check_model_dir, load_tokenizer, torch_dtype


def policy_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The policy's full fp32 weights from a checkpoint directory (`step_XXXXX/`), keyed like the HF model."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ds_dir = checkpoint / "policy"
    if not (ds_dir / "ds").is_dir():
        raise ValueError(
            f"{checkpoint} is not a training checkpoint (no policy/ds/); give run_dir/checkpoints/step_XXXXX"
        )
    return get_fp32_state_dict_from_zero_checkpoint(str(ds_dir), tag="ds")


def export(checkpoint: str | Path, out: str | Path, *, base: str | Path | None = None) -> Path:
    """Write the checkpoint's policy to `out` as a Hugging Face directory; returns `out`."""
    import yaml
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    checkpoint, out = Path(checkpoint), Path(out)
    config_file = checkpoint / "config.yaml"
    if not config_file.is_file():
        raise ValueError(f"{checkpoint} holds no config.yaml; give run_dir/checkpoints/step_XXXXX")
    model_cfg = yaml.safe_load(config_file.read_text(encoding="utf-8"))["model"]
    base_dir = check_model_dir(
        base if base is not None else model_cfg["path"], "--base" if base else "model.path"
    )
    state_dict = policy_state_dict(checkpoint)
    dtype = torch_dtype(model_cfg["dtype"])
    config = AutoConfig.from_pretrained(base_dir, local_files_only=True)
    config.use_cache = True
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(
            config, trust_remote_code=model_cfg.get("trust_remote_code", False)
        )
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    tied = {
        name
        for name in missing
        if getattr(config, "tie_word_embeddings", False) and name.endswith("lm_head.weight")
    }
    if set(missing) - tied or unexpected:
        raise ValueError(
            f"{checkpoint}: the checkpoint's weights do not fit the base model {base_dir} (missing "
            f"{sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]}); pass the run's base model "
            "with --base"
        )
    model.tie_weights()
    model = model.to(dtype)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    load_tokenizer(base_dir).save_pretrained(tmp)
    if (base_dir / "generation_config.json").is_file():  # else save_pretrained wrote the model's own
        GenerationConfig.from_pretrained(base_dir, local_files_only=True).save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Export a training checkpoint's policy as a Hugging Face model directory."""
    ap = argparse.ArgumentParser(prog="igpo export", description=main.__doc__)
    ap.add_argument("checkpoint", help="a checkpoint directory: RUN_DIR/checkpoints/step_XXXXX")
    ap.add_argument("out", help="output directory (replaced if it exists)")
    ap.add_argument(
        "--base", help="the run's base model directory (default: model.path of the checkpoint's config)"
    )
    args = ap.parse_args(argv)
    try:
        out = export(args.checkpoint, args.out, base=args.base)
    except ValueError as exc:
        print(f"igpo export: {exc}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} → {out} (Hugging Face format: from_pretrained / igpo eval --model)")
    return 0

"""The setting of an evaluation: everything that changes a score, recorded beside the scores.

Model (path, and a hash of its config, tokenizer and weight file names and sizes), engine (and endpoint,
without any key), protocol, prompt template, system prompt, answer probe, turn and token budgets, sampling,
search (backend, corpus path and size in passages, top-k, cache mode), the data (files, sources, limit,
questions per source), with --beliefs the scorer's settings, and the project's version and git commit.

Two settings are the same evaluation when they are equal except for `project` (version, commit): a rerun into
the same output directory must have the same setting (a changed commit is reported, not refused).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from igpo_rlhf.config import Config

_ROOT = Path(__file__).resolve().parents[2]
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model")
UNCOMPARED = ("project",)  # keys of the setting that may differ between a run and its continuation


def model_fingerprint(path: str | Path) -> str:
    """sha256 (16 hex) of config.json, the tokenizer files and the weight files' names and sizes."""
    p = Path(path)
    h = hashlib.sha256()
    for name in ("config.json", *_TOKENIZER_FILES):
        if (p / name).is_file():
            h.update(name.encode() + b"\0" + (p / name).read_bytes() + b"\0")
    for f in sorted(p.iterdir()):
        if f.is_file() and f.suffix in _WEIGHT_SUFFIXES:
            h.update(f"{f.name}:{f.stat().st_size}\0".encode())
    return h.hexdigest()[:16]


def project_version() -> dict[str, Any]:
    """Version of igpo-rlhf and the git commit of this checkout (dirty: tracked files changed)."""
    import igpo_rlhf

    out: dict[str, Any] = {"version": igpo_rlhf.__version__, "commit": None, "dirty": None}
    try:
        commit = subprocess.run(
            ["git", "-C", str(_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return out  # not a git checkout (an installed package): version only
    out |= {"commit": commit, "dirty": bool(status.strip())}
    return out


def eval_setting(
    cfg: Config,
    *,
    data: list[str],
    questions_per_source: dict[str, int],
    n_samples: int,
    limit_per_source: int | None,
    search: dict[str, Any],
    device: str | None,
    beliefs: bool,
) -> dict[str, Any]:
    """The setting dict of scores.json (see the module docstring); `search`: what `search_setting` gives."""
    r, e = cfg.rollout, cfg.eval
    engine: dict[str, Any] = {"name": r.engine}
    if r.engine == "hf":
        engine |= {"device": device, "dtype": cfg.model.dtype}
    elif r.engine == "openai":
        o = r.openai
        engine |= {"base_url": o.base_url, "model": o.model or cfg.model.path, "mode": o.mode,
                   "extra_body": o.extra_body}  # fmt: skip
    else:
        engine |= {"tensor_parallel_size": r.vllm.tensor_parallel_size, "dtype": "bfloat16"}
    setting: dict[str, Any] = {
        "model": {"path": str(Path(cfg.model.path).resolve()), "hash": model_fingerprint(cfg.model.path)},
        "engine": engine,
        "protocol": r.protocol,
        "prompt_template": r.prompt_template,
        "system_prompt": r.system_prompt,
        "use_chat_template": r.use_chat_template,
        "observation_template": r.observation_template,
        "document_template": r.document_template,
        "answer_probe": cfg.algorithm.answer_probe,
        "max_turns": r.max_turns,
        "max_new_tokens": r.max_new_tokens,
        "max_prompt_tokens": r.max_prompt_tokens,
        "max_total_tokens": r.max_total_tokens,
        "max_observation_tokens": r.max_observation_tokens,
        "sampling": {
            "temperature": e.temperature,
            "top_p": e.top_p,
            "top_k": e.top_k,
            "n_samples": n_samples,
            "seed": e.seed,
        },  # fmt: skip
        "batching": {"chunk_size": e.chunk_size, "batch_size": r.batch_size},
        "search": search | {"top_k": r.search_top_k},
        "data": {
            "files": list(data),
            "format": cfg.data.format,
            "limit_per_source": limit_per_source,
            "questions": dict(questions_per_source),
        },  # fmt: skip
        "metrics": {
            "em": "squad",
            "f1": "squad",
            "f1_igpo": "igpo",
            "cover_em": "squad, whole words",
            "alias": "max over gold aliases",
        },  # fmt: skip
        "project": project_version(),
    }
    if beliefs:
        setting["beliefs"] = {"alias_reduce": cfg.algorithm.alias_reduce, "probe": cfg.algorithm.answer_probe}
    if any(f.startswith("world:") for f in data):
        setting["data"]["world"] = cfg.data.world.model_dump(mode="json")
    return json.loads(json.dumps(setting))  # plain JSON types, as it will be read back


def search_setting(cfg: Config, url: str, started: bool, health: dict[str, Any]) -> dict[str, Any]:
    """Search part of the setting: backend and passages as the running proxy reports them (/healthz); the
    corpus file and its fingerprint when we started the proxy from the config."""
    out: dict[str, Any] = {
        "backend": health.get("backend"),
        "passages": health.get("passages"),
        "cache_mode": health.get("cache_mode"),
    }
    if started:
        from services.search_proxy.corpus import corpus_fingerprint

        corpus = cfg.search.proxy.corpus
        out["corpus"] = str(Path(corpus).resolve()) if corpus is not None else None
        out["corpus_fingerprint"] = corpus_fingerprint(corpus) if corpus is not None else None
    else:
        out["url"] = url
    return out


def setting_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys where two settings differ (`project` excluded at the top level)."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        if not prefix and key in UNCOMPARED:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += setting_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} → {b!r}")
    return diffs

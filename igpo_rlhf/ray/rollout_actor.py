"""RolloutActor: a Ray actor that holds the generator (engine=hf) and runs the multi-turn agent loop.

    actor = RolloutActor.options(num_cpus=1).remote(model_path, cfg.rollout, proxy_url, answer_probe="<answer>")
    trajectories = ray.get(actor.generate.remote(prompts, step, group_offset=0))
    ray.get(actor.update_weights.remote(policy_state_dict, version))   # after every policy update

Which generator serves rollouts: `rollout.engine=hf` → RolloutActors (this file; CPU or one GPU each);
`rollout.engine=vllm` → vLLM engine actors from `igpo_rlhf/rollout/vllm_engine.py` (`create_engines`), which
the driver wraps in `VLLMEngine` and passes to `run_rollouts` itself; weights then go by NCCL broadcast
(`init_weight_sync` / `broadcast_weights`) instead of `update_weights`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from igpo_rlhf.config import RolloutConfig
from igpo_rlhf.rollout.agent_loop import call_seed, rollouts_for_config
from igpo_rlhf.rollout.engine import HFEngine
from igpo_rlhf.rollout.protocols import make_protocol
from igpo_rlhf.rollout.trajectory import PromptItem, Trajectory
from services.search_proxy.client import SearchClient

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(model_path: str | Path) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer exactly as saved: `tokenizer.json` through PreTrainedTokenizerFast.

    AutoTokenizer would rebuild a Qwen2-architecture checkpoint's tokenizer as Qwen2Tokenizer with its own
    pre-tokenizer, which gives other ids for a tokenizer trained locally (DESIGN.md, facts); real
    checkpoints ship tokenizer.json too. Without tokenizer.json we fall back to AutoTokenizer.
    """
    path = Path(model_path)
    if (path / "tokenizer.json").is_file():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class _RolloutActor:
    """Generator + agent loop for `rollout.engine=hf` (transformers generate on CPU or one GPU)."""

    def __init__(
        self,
        model_path: str,
        rollout_cfg: RolloutConfig | dict[str, Any],
        search_url: str,
        *,
        answer_probe: str,
        device: str = "cpu",
        dtype: str = "float32",
        seed: int = 0,
        search_timeout_s: float = 30.0,
        search_retries: int = 2,
        search_token: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        cfg = (
            rollout_cfg
            if isinstance(rollout_cfg, RolloutConfig)
            else RolloutConfig.model_validate(rollout_cfg)
        )
        if cfg.engine != "hf":
            raise ValueError(
                f"rollout.engine={cfg.engine!r}: RolloutActor runs engine=hf; engine=vllm is served by the vLLM "
                "engine actors of igpo_rlhf/rollout/vllm_engine.py"
            )
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}; accepted: {', '.join(DTYPES)}")
        if not Path(model_path).is_dir():
            raise ValueError(
                f"model_path={model_path!r} is not a directory holding a Hugging Face checkpoint"
            )
        self.cfg = cfg
        self.seed = seed
        self.tokenizer = load_tokenizer(model_path)
        model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
        )
        self.engine = HFEngine(model, self.tokenizer, device=device)
        self.protocol = make_protocol(cfg, self.tokenizer, answer_probe)
        client_kwargs: dict[str, Any] = {"timeout": search_timeout_s, "retries": search_retries}
        if search_token is not None:
            client_kwargs["token"] = search_token
        self.search = SearchClient(search_url, **client_kwargs)
        self.version = 0

    def generate(self, prompts: list[PromptItem], step: int, group_offset: int = 0) -> list[Trajectory]:
        """n = rollout.n_samples rollouts of every prompt, sampled with a seed derived from (seed, step,
        group_offset). `group_offset`: index of prompts[0] within the step (when several actors share it);
        the trajectories' group_id counts from there."""
        trajectories = rollouts_for_config(
            self.engine,
            self.tokenizer,
            self.protocol,
            self.search,
            prompts,
            self.cfg,
            seed=call_seed(self.seed, step, group_offset),
            weights_version=self.version,
        )
        for traj in trajectories:
            traj.group_id += group_offset
        return trajectories

    def update_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> int:
        """Loads the policy's full state dict (θ_old for the next rollouts); returns the new version."""
        self.engine.load_weights(state_dict)
        self.version = int(version)
        return self.version

    def weights_version(self) -> int:
        """Version of the weights the next rollouts will be sampled with (0: the checkpoint's)."""
        return self.version


RolloutActor = ray.remote(_RolloutActor)

"""RolloutActor: holds the generator (rollout.engine=hf) and runs the multi-turn agent loop.

    group = ActorGroup(RolloutActor, placement, init_args=(cfg, proxy_url))     # see generators.HFRollouts
    trajectories = ray.get(group.actors[0].generate.remote(prompts, step, group_offset=0))
    ray.get(group.actors[0].update_weights.remote(policy_state_dict, version))  # after every policy update

`rollout.engine=vllm` is served by vLLM engine actors instead (`igpo_rlhf/rollout/vllm_engine.py`), which
the driver wraps in `VLLMEngine`; generators.py puts both behind one interface.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from igpo_rlhf.models.loading import load_causal_lm, load_tokenizer, load_weights_in_place
from igpo_rlhf.rollout.agent_loop import call_seed, rollouts_for_config
from igpo_rlhf.rollout.engine import HFEngine
from igpo_rlhf.rollout.protocols import make_protocol
from igpo_rlhf.rollout.searcher import ProxySearcher

if TYPE_CHECKING:
    from igpo_rlhf.config import Config
    from igpo_rlhf.rollout.trajectory import PromptItem, Trajectory


class RolloutActor:
    """Generator + agent loop for `rollout.engine=hf` (transformers generate on CPU or one GPU)."""

    def __init__(
        self, cfg: Config, search_url: str, *, device: str = "cpu", search_token: str | None = None
    ) -> None:
        """`search_token`: the proxy's bearer token, from the driver (HFRollouts); None: read the variable
        search.token_env names in this actor's environment."""
        if cfg.rollout.engine != "hf":
            raise ValueError(
                f"rollout.engine={cfg.rollout.engine!r}: RolloutActor runs engine=hf; engine=vllm is served by "
                "the vLLM engine actors of igpo_rlhf/rollout/vllm_engine.py"
            )
        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg.model.path)
        model = load_causal_lm(
            cfg.model.path, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code
        )
        self.engine = HFEngine(model, self.tokenizer, device=device)
        self.protocol = make_protocol(cfg.rollout, self.tokenizer, cfg.algorithm.answer_probe)
        if search_token is None:
            self.search = ProxySearcher.from_config(search_url, cfg.search)
        else:
            s = cfg.search
            self.search = ProxySearcher(
                search_url, timeout_s=s.timeout_s, retries=s.retries, token=search_token
            )
        self.version = 0

    def generate(
        self,
        prompts: list[PromptItem],
        step: int,
        group_offset: int = 0,
        sampling: dict[str, Any] | None = None,
    ) -> list[Trajectory]:
        """n = rollout.n_samples rollouts of every prompt, sampled with a seed derived from (train.seed, step,
        group_offset). `group_offset`: index of prompts[0] within the step (when several actors share it);
        the trajectories' group_id counts from there. `sampling`: rollout-section fields to override for
        this call (evaluation: n_samples, temperature, ...)."""
        rollout_cfg = self.cfg.rollout.model_copy(update=sampling) if sampling else self.cfg.rollout
        trajectories = rollouts_for_config(
            self.engine,
            self.tokenizer,
            self.protocol,
            self.search,
            prompts,
            rollout_cfg,
            seed=call_seed(self.cfg.train.seed, step, group_offset),
            weights_version=self.version,
        )
        for traj in trajectories:
            traj.group_id += group_offset
        return trajectories

    def update_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> int:
        """Loads the policy's full state dict (θ_old for the next rollouts); returns the new version."""
        load_weights_in_place(self.engine.model, state_dict.items())
        self.version = int(version)
        return self.version

    def weights_version(self) -> int:
        """Version of the weights the next rollouts will be sampled with (0: the checkpoint's)."""
        return self.version

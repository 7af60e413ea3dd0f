"""The rollout side of a step, behind one small interface for the two engines:

    generate(prompts, step) -> list[Trajectory]      n = rollout.n_samples per prompt, group_id = prompt index
    push_weights(policy, version) -> None            after every update: θ_old for the next rollouts

- `HFRollouts` (rollout.engine=hf, CPU or GPU): RolloutActors, each rolling out a contiguous share of the
  step's prompts; weights through the Ray object store (policy rank 0's state dict, resolved by Ray).
- `VLLMRollouts` (rollout.engine=vllm, GPU only): vLLM engine actors created through
  igpo_rlhf.rollout.vllm_engine; the agent loop runs in the driver (cheap CPU work) with `VLLMEngine`;
  weights by NCCL broadcast from the policy's rank 0 into the engines. Cannot run on a CPU machine.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import ray

from igpo_rlhf.ray.group import ActorGroup
from igpo_rlhf.ray.placement import RolePlacement
from igpo_rlhf.rollout.trajectory import PromptItem, Trajectory

if TYPE_CHECKING:
    from igpo_rlhf.config import Config, SearchConfig


def search_token(search_cfg: SearchConfig) -> str | None:
    """The proxy's bearer token from the environment variable `search.token_env` names (None: no auth)."""
    if search_cfg.token_env is None:
        return None
    token = os.environ.get(search_cfg.token_env)
    if not token:
        raise ValueError(
            f"search.token_env={search_cfg.token_env!r} but that environment variable is not set"
        )
    return token


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) of `parts` contiguous, near-equal chunks of range(n); empty chunks are dropped."""
    bounds = [round(k * n / parts) for k in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


class HFRollouts:
    """RolloutActors (transformers generate), one per `resources.rollout.num_actors`."""

    def __init__(self, cfg: Config, placement: RolePlacement, search_url: str) -> None:
        from igpo_rlhf.ray.rollout_actor import RolloutActor

        self.group = ActorGroup(
            RolloutActor,
            placement,
            init_args=(cfg.model.path, cfg.rollout, search_url),
            init_kwargs={
                "answer_probe": cfg.algorithm.answer_probe,
                "device": "cuda" if placement.num_gpus > 0 else "cpu",
                "dtype": cfg.model.dtype,
                "seed": cfg.train.seed,
                "search_timeout_s": cfg.search.timeout_s,
                "search_retries": cfg.search.retries,
                "search_token": search_token(cfg.search),
                "trust_remote_code": cfg.model.trust_remote_code,
            },
        )

    def ready(self) -> list[ray.ObjectRef]:
        return self.group.call_async("weights_version")

    def generate(self, prompts: list[PromptItem], step: int) -> list[Trajectory]:
        """Each actor rolls out a contiguous chunk; group ids count from the chunk's offset in the step."""
        chunks = _split(len(prompts), len(self.group))
        refs = [
            actor.generate.remote(prompts[a:b], step, group_offset=a)
            for actor, (a, b) in zip(self.group.actors, chunks, strict=False)
        ]
        return [traj for part in ray.get(refs) for traj in part]

    def push_weights(self, state_dict_ref: ray.ObjectRef, version: int) -> list[ray.ObjectRef]:
        """Every actor loads the policy's state dict (Ray resolves the ref in the actor)."""
        return [a.update_weights.remote(state_dict_ref, version) for a in self.group.actors]

    def weights_versions(self) -> list[int]:
        return self.group.call("weights_version")

    @property
    def parallelism(self) -> int:
        return len(self.group)


class VLLMRollouts:
    """vLLM engine actors + the agent loop in the driver (GPU only)."""

    def __init__(self, cfg: Config, search_url: str, tokenizer: Any, protocol: Any) -> None:
        from igpo_rlhf.rollout import vllm_engine
        from services.search_proxy.client import SearchClient

        v = cfg.rollout.vllm
        self.cfg = cfg
        self.engines = vllm_engine.create_engines(
            cfg.model.path,
            num_engines=cfg.resources.rollout.num_actors,
            tensor_parallel_size=v.tensor_parallel_size,
            seed=cfg.train.seed,
            max_model_len=v.max_model_len or cfg.rollout.max_total_tokens,
            gpu_memory_utilization=v.gpu_memory_utilization,
            enable_prefix_caching=v.enable_prefix_caching,
            enforce_eager=v.enforce_eager,
        )
        self.engine = vllm_engine.VLLMEngine(self.engines)
        self.tokenizer = tokenizer
        self.protocol = protocol
        kwargs: dict[str, Any] = {"timeout": cfg.search.timeout_s, "retries": cfg.search.retries}
        token = search_token(cfg.search)
        if token is not None:
            kwargs["token"] = token
        self.search = SearchClient(search_url, **kwargs)
        self.version = 0

    def ready(self) -> list[ray.ObjectRef]:
        return []

    def generate(self, prompts: list[PromptItem], step: int) -> list[Trajectory]:
        from igpo_rlhf.rollout.agent_loop import call_seed, rollouts_for_config

        return rollouts_for_config(
            self.engine,
            self.tokenizer,
            self.protocol,
            self.search,
            prompts,
            self.cfg.rollout,
            seed=call_seed(self.cfg.train.seed, step, 0),
            weights_version=self.version,
        )

    def broadcast_from(self, policy: ActorGroup, version: int) -> None:
        """NCCL broadcast from the policy's rank 0 (collective over the policy group), then drop the
        engines' prefix caches, which hold KV of the old weights."""
        v = self.cfg.rollout.vllm
        policy.call("broadcast_to_vllm", self.engines, v.tensor_parallel_size, v.sync_backend)
        self.engine.reset_prefix_cache()
        self.version = version

    def weights_versions(self) -> list[int]:
        return [self.version]

    @property
    def parallelism(self) -> int:
        return 1

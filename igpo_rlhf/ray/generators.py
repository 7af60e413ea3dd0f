"""The rollout side of a step, behind one interface for the two engines (`Rollouts`):

    generate(prompts, step, sampling=None) -> list[Trajectory]   n = rollout.n_samples per prompt (or
                                                                  sampling["n_samples"]), group_id = prompt index
    push_weights(policy, state_dict, version) -> list[ObjectRef]  after every update: θ_old for the next rollouts
    close()                                                       kill the engines

- `HFRollouts` (rollout.engine=hf, CPU or GPU): RolloutActors, each rolling out a contiguous share of the
  step's prompts; weights through the Ray object store (policy rank 0's state dict, resolved by Ray). The
  search proxy's token (search.token_env, read here in the driver) is handed to each actor, so actors on
  other nodes need no environment variable.
- `VLLMRollouts` (rollout.engine=vllm, GPU only): vLLM engine actors created through
  igpo_rlhf.rollout.vllm_engine; the agent loop runs in the driver (cheap CPU work) with `VLLMEngine`, which
  spreads prompts over the engines and keeps each trajectory on one; weights by NCCL broadcast from the
  policy's rank 0 into the engines; `close()` kills the engines and removes their placement group. Cannot
  run on a CPU machine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import ray

from igpo_rlhf.ray import watch
from igpo_rlhf.ray.group import ActorGroup
from igpo_rlhf.ray.placement import RolePlacement
from igpo_rlhf.rollout.trajectory import PromptItem, Trajectory

if TYPE_CHECKING:
    from igpo_rlhf.config import Config


class Rollouts(Protocol):
    """What the trainer needs from the generator side of a run."""

    parallelism: int  # rollouts generated concurrently (to turn summed per-rollout times into wall time)

    def ready(self) -> list[ray.ObjectRef]: ...
    def generate(
        self, prompts: list[PromptItem], step: int, sampling: dict[str, Any] | None = None
    ) -> list[Trajectory]: ...
    def push_weights(
        self, policy: ActorGroup, state_dict: ray.ObjectRef, version: int
    ) -> list[ray.ObjectRef]: ...
    def close(self) -> None: ...


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) of `parts` contiguous, near-equal chunks of range(n); empty chunks are dropped."""
    bounds = [round(k * n / parts) for k in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


class HFRollouts:
    """RolloutActors (transformers generate), one per `resources.rollout.num_actors`."""

    def __init__(self, cfg: Config, placement: RolePlacement, search_url: str) -> None:
        from igpo_rlhf.ray.rollout_actor import RolloutActor
        from igpo_rlhf.rollout.searcher import search_token

        self.group = ActorGroup(
            RolloutActor,
            placement,
            init_args=(cfg, search_url),
            init_kwargs={
                "device": "cuda" if placement.num_gpus > 0 else "cpu",
                "search_token": search_token(cfg.search),
            },
        )
        self.parallelism = len(self.group)
        self.timeout_s = cfg.train.timeouts.rollout_s

    def ready(self) -> list[ray.ObjectRef]:
        return self.group.call_async("weights_version")

    def generate(
        self, prompts: list[PromptItem], step: int, sampling: dict[str, Any] | None = None
    ) -> list[Trajectory]:
        """Each actor rolls out a contiguous chunk; group ids count from the chunk's offset in the step.
        Within train.timeouts.rollout_s, else watch.ActorTimedOut naming the actor (ActorDied if one dies)."""
        chunks = _split(len(prompts), len(self.group))
        refs = [
            actor.generate.remote(prompts[a:b], step, group_offset=a, sampling=sampling)
            for actor, (a, b) in zip(self.group.actors, chunks, strict=False)
        ]
        doing = f"generate for step {step}" if sampling is None else "generate for validation"
        parts = watch.get(refs, doing, self.timeout_s, "train.timeouts.rollout_s")
        return [traj for part in parts for traj in part]

    def push_weights(
        self, policy: ActorGroup, state_dict: ray.ObjectRef, version: int
    ) -> list[ray.ObjectRef]:
        """Every actor loads the policy's state dict (Ray resolves the ref in the actor)."""
        return [a.update_weights.remote(state_dict, version) for a in self.group.actors]

    def weights_versions(self) -> list[int]:
        return self.group.call("weights_version")

    def close(self) -> None:
        self.group.kill()


class VLLMRollouts:
    """vLLM engine actors + the agent loop in the driver (GPU only)."""

    parallelism = 1  # the driver's loop generates every rollout of a step together

    def __init__(self, cfg: Config, search_url: str, tokenizer: Any, protocol: Any) -> None:
        from igpo_rlhf.rollout import vllm_engine
        from igpo_rlhf.rollout.searcher import ProxySearcher

        self.cfg = cfg
        self.engines, group = vllm_engine.create_engines_from_config(cfg, seed=cfg.train.seed)
        watch.register("vllm engine", self.engines)
        self.engine = vllm_engine.VLLMEngine(self.engines, placement_group=group)
        self.tokenizer = tokenizer
        self.protocol = protocol
        self.search = ProxySearcher.from_config(search_url, cfg.search)
        self.version = 0

    def ready(self) -> list[ray.ObjectRef]:
        return []

    def generate(
        self, prompts: list[PromptItem], step: int, sampling: dict[str, Any] | None = None
    ) -> list[Trajectory]:
        from igpo_rlhf.rollout.agent_loop import call_seed, rollouts_for_config

        rollout_cfg = self.cfg.rollout.model_copy(update=sampling) if sampling else self.cfg.rollout
        return rollouts_for_config(
            self.engine,
            self.tokenizer,
            self.protocol,
            self.search,
            prompts,
            rollout_cfg,
            seed=call_seed(self.cfg.train.seed, step, 0),
            weights_version=self.version,
        )

    def push_weights(
        self, policy: ActorGroup, state_dict: ray.ObjectRef, version: int
    ) -> list[ray.ObjectRef]:
        """NCCL broadcast from the policy's rank 0 (collective over the policy group; the state dict in the
        object store is not used), then drop the engines' prefix caches, which hold KV of the old weights."""
        v = self.cfg.rollout.vllm
        policy.call("broadcast_to_vllm", self.engines, v.tensor_parallel_size, v.sync_backend)
        self.engine.reset_prefix_cache()
        self.version = version
        return []

    def weights_versions(self) -> list[int]:
        return [self.version]

    def close(self) -> None:
        """Kill the engines and remove their placement group (idempotent)."""
        self.engine.close()
        watch.forget(self.engines)
        self.engines = []

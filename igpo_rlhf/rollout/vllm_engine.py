"""The vLLM generator (GPU only): vLLM engines as Ray actors, behind the same `generate` as HFEngine.

The only module of ours that touches vllm, and only inside functions: it imports on a CPU machine. We
reuse OpenRLHF 0.11.2 (`openrlhf.trainer.ray.vllm_engine`, which imports vllm at its top, so it is
imported lazily too) for what it already does well:
- `create_vllm_engines`: per-engine bundles, `AsyncLLMEngine` in a `RolloutRayActor` with OpenRLHF's
  `WorkerWrap` worker extension (we make the placement group ourselves and pass it in: OpenRLHF's own is
  waited for without a timeout and never handed back, so it could be neither bounded nor removed);
- `RolloutRayActor.generate(prompt_token_ids, sampling_params)` → the final vLLM `RequestOutput`;
- weight sync: `RolloutRayActor.init_process_group` / `update_weight` (NCCL broadcast from the policy's
  rank 0, through vLLM's `StatelessProcessGroup` + `PyNcclCommunicator` via
  `openrlhf.utils.distributed_util.stateless_init_process_group`).
What OpenRLHF lacks and we add here: the multi-turn request glue (per-row budgets, stop strings kept in
the output, per-row seeds, finish mapping to our `Generation`), the engine each request goes to
(`EngineRouter`: prompts round-robin, every turn of a trajectory on its prompt's engine), and the two
weight-sync calls as plain functions, because OpenRLHF keeps them inside its PPO actor class.

How the trainer picks: `rollout.engine=hf` → `RolloutActor`s (igpo_rlhf/ray/rollout_actor.py) each hold an
HFEngine and run the agent loop; `rollout.engine=vllm` → the driver calls `create_engines(...)`, wraps the
handles in `VLLMEngine`, and runs `run_rollouts(VLLMEngine(...), ...)` itself (the agent loop is cheap
CPU work; the generation runs in the engine actors), then pushes weights with `init_weight_sync` +
`broadcast_weights` from the policy's rank 0 after every update.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from igpo_rlhf.rollout.engine import Generation, check_generate_args


# ----------------------------------------------------------------------------------- request glue (pure)
def sampling_kwargs(
    *,
    max_new_tokens: int,
    stop_strings: list[str],
    temperature: float,
    top_p: float,
    top_k: int,
    seed: int | None,
) -> dict[str, Any]:
    """Keyword arguments of `vllm.SamplingParams` for one row.

    Stop strings are kept in the output (`include_stop_str_in_output=True`) so the trajectory holds every
    sampled token; top_k=-1 (ours: disabled) becomes vLLM's preferred 0; temperature 0 is greedy in both.
    Nothing else is set, so no repetition penalty or model default changes π_θ's distribution.
    """
    return {
        "n": 1,
        "max_tokens": max_new_tokens,
        "stop": list(stop_strings),
        "include_stop_str_in_output": True,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": 0 if top_k == -1 else top_k,
        "seed": seed,
        "skip_special_tokens": False,
    }


def row_seeds(seed: int | None, n: int) -> list[int | None]:
    """A distinct seed per row (the n rollouts of one prompt must not share a seed: they would coincide)."""
    if seed is None:
        return [None] * n
    return [int(s & 0x7FFFFFFF) for s in np.random.SeedSequence([seed]).generate_state(n)]


class EngineRouter:
    """Which engine serves each context: prompts round-robin, every later turn on its prompt's engine.

    A context the router has not seen a prefix of is a new prompt (turn 1) and gets the next engine in turn;
    the n rollouts of a group share that prompt, so they land together and share its prefix cache. A later
    turn's context starts with its prompt, so it finds the prompt's engine: each trajectory stays on one
    engine. Load spreads by prompt count whatever the prompts share: every tool_call prompt starts with the
    same long system message, so routing by a hash of the first tokens sent everything to one engine.

    Prefixes are found by hash: h(c[:L]) = Σ_{j<L} c_j · w_j mod 2^64 with fixed random 64-bit weights w_j, so
    one cumulative sum gives the hash of every prefix of a context, and each registered prompt length is one
    dict lookup. The last `max_prompts` prompts are remembered.
    """

    def __init__(self, n_engines: int, *, max_prompts: int = 16384, seed: int = 0) -> None:
        if n_engines < 1:
            raise ValueError(f"n_engines={n_engines}: need at least one engine")
        self.n_engines = n_engines
        self.max_prompts = max_prompts
        self._rng = np.random.default_rng(seed)
        self._weights = np.zeros(0, dtype=np.uint64)
        self._prompts: OrderedDict[tuple[int, int], int] = OrderedDict()  # (length, hash) -> engine
        self._lengths: dict[int, int] = {}  # prompt length -> prompts of that length remembered
        self._next = 0

    def route(self, contexts: list[list[int]]) -> list[int]:
        """The engine index of every context (registering the new prompts among them), in order."""
        return [self._route(ctx) for ctx in contexts]

    def _route(self, context: list[int]) -> int:
        hashes = self._prefix_hashes(context)  # hashes[L - 1] = h(context[:L])
        for length in sorted((n for n in self._lengths if n <= len(context)), reverse=True):
            key = (length, int(hashes[length - 1]))
            if key in self._prompts:
                self._prompts.move_to_end(key)
                return self._prompts[key]
        engine = self._next % self.n_engines
        self._next += 1
        self._prompts[(len(context), int(hashes[-1]))] = engine
        self._lengths[len(context)] = self._lengths.get(len(context), 0) + 1
        if len(self._prompts) > self.max_prompts:
            (length, _), _ = self._prompts.popitem(last=False)
            self._lengths[length] -= 1
            if not self._lengths[length]:
                del self._lengths[length]
        return engine

    def _prefix_hashes(self, context: list[int]) -> np.ndarray:
        if len(self._weights) < len(context):
            more = self._rng.integers(
                0, 2**64 - 1, size=max(len(context), 2 * len(self._weights)), dtype=np.uint64
            )
            self._weights = np.concatenate([self._weights, more[len(self._weights) :]])
        ids = np.asarray(context, dtype=np.uint64)
        with np.errstate(over="ignore"):
            return np.cumsum(ids * self._weights[: len(ids)], dtype=np.uint64)  # wraps mod 2^64


def to_generation(request_output: Any) -> Generation:
    """vLLM `RequestOutput` (one completion) → Generation.

    vLLM's `CompletionOutput.finish_reason` is "stop" or "length" ("abort" when the request was
    cancelled); on "stop", `stop_reason` is the matched stop string (str), a stop token id (int) or None
    for EOS. Our finish: a stop string → "stop", EOS or a stop token → "eos", "length" → "length".
    """
    outputs = request_output.outputs
    if len(outputs) != 1:
        raise ValueError(f"expected one completion per request (n=1), got {len(outputs)}")
    out = outputs[0]
    reason = out.finish_reason
    if reason == "length":
        finish = "length"
    elif reason == "stop":
        finish = "stop" if isinstance(out.stop_reason, str) else "eos"
    else:
        raise RuntimeError(f"vLLM request finished with finish_reason={reason!r} (aborted or unfinished)")
    return Generation(token_ids=[int(t) for t in out.token_ids], finish=finish)


# --------------------------------------------------------------------------------------------- engine
def _vllm_sampling_params(**kwargs: Any) -> Any:
    from vllm import SamplingParams

    return SamplingParams(**kwargs)


class VLLMEngine:
    """`Engine` over vLLM Ray actors (OpenRLHF's `RolloutRayActor`s, from `create_engines`).

    Requests are spread by `EngineRouter`. `placement_group`: the engines' group (from `create_engines`),
    removed with the engines by `close()`. `make_sampling_params` builds the per-row sampling object (default
    `vllm.SamplingParams`); `get` is `ray.get`. Both are parameters only so the glue can be tested on a
    machine without a GPU.
    """

    def __init__(
        self,
        actors: list[Any],
        *,
        placement_group: Any = None,
        make_sampling_params: Callable[..., Any] = _vllm_sampling_params,
        get: Callable[[list[Any]], list[Any]] | None = None,
    ) -> None:
        if not actors:
            raise ValueError("VLLMEngine needs at least one vLLM engine actor")
        self.actors = list(actors)
        self.placement_group = placement_group
        self.router = EngineRouter(len(self.actors))
        self.make_sampling_params = make_sampling_params
        if get is None:
            import ray

            get = ray.get
        self.get = get

    def generate(
        self,
        contexts: list[list[int]],
        *,
        max_new_tokens: list[int],
        stop_strings: list[str],
        temperature: float,
        top_p: float,
        top_k: int,
        seed: int | None,
    ) -> list[Generation]:
        """One request per row (vLLM batches concurrent requests itself); contract in engine.py."""
        check_generate_args(contexts, max_new_tokens, temperature, top_p, top_k)
        refs = []
        engines = self.router.route(contexts)
        for ctx, budget, row_seed, engine in zip(
            contexts, max_new_tokens, row_seeds(seed, len(contexts)), engines, strict=True
        ):
            params = self.make_sampling_params(
                **sampling_kwargs(
                    max_new_tokens=budget,
                    stop_strings=stop_strings,
                    temperature=temperature,
                    top_p=top_p,
                    top_k=top_k,
                    seed=row_seed,
                )
            )
            actor = self.actors[engine]
            refs.append(actor.generate.remote(prompt_token_ids=list(ctx), sampling_params=params))
        return [to_generation(out) for out in self.get(refs)]

    def reset_prefix_cache(self) -> None:
        """Drop cached KV of the old weights (call after every weight push)."""
        self.get([a.reset_prefix_cache.remote() for a in self.actors])

    def close(self) -> None:
        """Kill the engine actors and remove their placement group (idempotent)."""
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)
            self.placement_group = None


# ------------------------------------------------------------------------------------ creation and sync
def create_engines_from_config(cfg: Any, *, seed: int) -> tuple[list[Any], Any]:
    """`create_engines` with the run config's settings (model.path, resources.rollout, rollout.vllm): the
    one place training (`ray/generators.py`) and `igpo eval` turn the config into engine actors."""
    v = cfg.rollout.vllm
    return create_engines(
        cfg.model.path,
        num_engines=cfg.resources.rollout.num_actors,
        tensor_parallel_size=v.tensor_parallel_size,
        seed=seed,
        max_model_len=v.max_model_len or cfg.rollout.max_total_tokens,
        gpu_memory_utilization=v.gpu_memory_utilization,
        enable_prefix_caching=v.enable_prefix_caching,
        enforce_eager=v.enforce_eager,
        gpus=cfg.resources.rollout.num_gpus,
    )


def create_engines(
    model_path: str,
    *,
    num_engines: int,
    tensor_parallel_size: int,
    seed: int,
    max_model_len: int,
    gpu_memory_utilization: float,
    enable_prefix_caching: bool,
    enforce_eager: bool,
    gpus: float = 1.0,
    timeout_s: float = 600.0,
) -> tuple[list[Any], Any]:
    """`num_engines` vLLM engine actors serving `model_path` (OpenRLHF's `create_vllm_engines`; bfloat16), and
    their placement group: `VLLMEngine(actors, placement_group=group)` removes both on `close()`.

    The group (one whole GPU and one CPU per engine worker, PACK, as OpenRLHF's own) is made and waited for
    here, `timeout_s` at most, then passed to OpenRLHF as its shared group: its engines then ask for a
    fraction of their bundle's GPU (0.2), which the bundle holds whole. A single engine without tensor
    parallelism reserves `gpus` (resources.rollout.num_gpus, at least 0.2) instead, so that one GPU can hold it
    and the training roles (bench/gpu_check.sh). TimeoutError naming what was asked.
    """
    require_vllm()
    from openrlhf.trainer.ray.vllm_engine import create_vllm_engines

    whole = num_engines > 1 or tensor_parallel_size > 1
    bundle_gpus = 1.0 if whole else min(1.0, max(0.2, gpus))
    group = reserve_engine_gpus(num_engines * tensor_parallel_size, bundle_gpus, timeout_s=timeout_s)
    try:
        actors = create_vllm_engines(
            num_engines,
            tensor_parallel_size,
            model_path,
            seed,
            False,  # full_determinism
            enable_prefix_caching,
            enforce_eager,
            max_model_len,
            shared_pg=group,
            gpu_memory_utilization=gpu_memory_utilization,
        )
    except BaseException:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(group)
        raise
    return actors, group


def reserve_engine_gpus(n_gpus: int, gpus: float = 1.0, *, timeout_s: float) -> Any:
    """A placement group of `n_gpus` bundles {GPU: gpus, CPU: 1} (PACK), ready; TimeoutError with what is free."""
    from ray.util.placement_group import placement_group, remove_placement_group

    from igpo_rlhf.ray.placement import wait_ready

    group = placement_group([{"GPU": gpus, "CPU": 1} for _ in range(n_gpus)], strategy="PACK")
    what = (f"{n_gpus} GPU(s) for the vLLM engines (resources.rollout.num_actors x "
            "rollout.vllm.tensor_parallel_size)")  # fmt: skip
    try:
        wait_ready(group, what, timeout_s, "lower those or free GPUs")
    except TimeoutError:
        remove_placement_group(group)
        raise
    return group


def require_vllm() -> None:
    """ValueError saying how to install vLLM when `import vllm` fails here (rollout.engine=vllm)."""
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        raise ValueError(
            f"rollout.engine=vllm needs the vllm package, which does not import here ({exc}); on a GPU machine "
            "install the gpu extra: `make install-gpu` (pip install -e '.[gpu]'), or set rollout.engine=hf"
        ) from None


def init_weight_sync(actors: list[Any], *, tensor_parallel_size: int, backend: str = "nccl") -> Any:
    """On the policy's rank 0: one process group of rank 0 + every engine worker; returns the group.

    Rank layout as OpenRLHF's: [policy rank 0 | engine 0's TP workers | engine 1's | ...].
    """
    import socket

    import ray
    from openrlhf.utils.distributed_util import stateless_init_process_group

    address = ray.util.get_node_ip_address()
    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    world_size = len(actors) * tensor_parallel_size + 1
    refs = [
        actor.init_process_group.remote(
            address,
            port,
            i * tensor_parallel_size + 1,
            world_size,
            "igpo_weight_sync",
            backend=backend,
            use_ray=False,
        )
        for i, actor in enumerate(actors)
    ]
    group = stateless_init_process_group(address, port, 0, world_size, torch.cuda.current_device())
    ray.get(refs)
    return group


def broadcast_weights(
    actors: list[Any], group: Any, named_tensors: Iterable[tuple[str, torch.Tensor]]
) -> int:
    """On the policy's rank 0: sends every (name, full CUDA tensor) to all engines; returns how many.

    Tensors must already be in the engines' dtype (bfloat16, as `create_engines` starts them): OpenRLHF's
    `WorkerWrap.update_weight` asserts it. Names are the Hugging Face parameter names.

    Each engine's `update_weight` allocates the tensor, receives the broadcast and calls vLLM's
    `load_weights`. Under ZeRO-3, gather each parameter before passing it (e.g. with
    `deepspeed.zero.GatheredParameters`). Reset the engines' prefix caches afterwards.
    """
    import ray

    items = list(named_tensors)
    for k, (name, tensor) in enumerate(items):
        refs = [
            actor.update_weight.remote(
                name, dtype=tensor.dtype, shape=tuple(tensor.shape), empty_cache=k == len(items) - 1
            )
            for actor in actors
        ]
        group.broadcast(tensor.data, src=0, stream=torch.cuda.current_stream())
        ray.get(refs)
    return len(items)

"""`igpo plan -c CONFIG`: the GPU memory each role of a run needs, per GPU, before anything is started.

An estimate from the model's config.json (parameters from vocabulary, hidden size, layers, MLP width, heads,
KV heads and tied embeddings), the dtype, the ZeRO stage and world size, optimizer offload, the token budgets
of each pass (activations, logits chunks, KV caches), vLLM's memory share and the colocation of roles
(roles that share a GPU add up). `igpo train` runs the same check at start-up when roles use GPUs and stops
with exit code 2, naming the knobs to turn, when a GPU would not hold its roles.

What each part counts, per actor (P parameters, b bytes per parameter of model.dtype, N ranks of the role):
- weights: b·P (ZeRO-3: b·P/N; with train.offload at ZeRO-3 only the live parameters stay on the GPU);
- optimizer (trained roles): fp32 Adam moments 8·P, and with ZeRO >= 1 or mixed precision an fp32 master copy
  4·P, divided by N from ZeRO-1 on (bf16 at ZeRO-0 is DeepSpeed's BF16_Optimizer, partitioned like ZeRO-1);
  0 on the GPU with train.offload;
- gradients: b·P while the backward runs (ZeRO-2/3: b·P/N; ZeRO-1 and bf16 at ZeRO-0 add fp32 gradient
  partitions); buffers: DeepSpeed's contiguous reduce bucket (5e8 elements at most) and at ZeRO-3 its live
  parameters (1e9 at most);
- activations: per token of a micro-batch (micro_batch_size x max_total_tokens) and layer, what autograd keeps
  of a Llama/Qwen2 decoder layer under sdpa: 9·H + 2·KV + 4·I elements (two norms 2·H each, attention input
  H, q H, k and v KV each, attention output and its o_proj copy 2·H, MLP input H, gate, up, act(gate) and
  their product 4·I), in model.dtype, plus an fp32 copy of each norm's input in mixed precision; with
  gradient checkpointing, one H per token and layer plus one layer's worth;
- logits: train.logits_chunk (scorer.logits_chunk) rows of V float32 logits, three such tensors at once
  (logits, their softmax pieces, the gradient);
- KV cache: the scorer and reference keep the keys and values of scorer.token_budget tokens
  (2·layers·KV·b per token); an hf rollout actor those of rollout.batch_size x max_total_tokens; a vLLM
  engine takes rollout.vllm.gpu_memory_utilization of its GPU whatever the rest, and what the weights leave
  of it is its KV cache;
- overhead: the CUDA context, NCCL and allocator slack of each process (1 GB assumed, not measured).

Measured against on CPU (tests/ray/test_memory_plan.py): the parameter count equals transformers' for Qwen2,
Qwen3 and Llama configs; DeepSpeed's model states after a real ZeRO-0/2 step and the peak of a real
forward + backward with a known token count are within the tolerances stated there. The GPU-side constants
(buckets, CUDA context, vLLM's share) follow DeepSpeed's and vLLM's documented defaults and have not been
measured here: no GPU was available.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from igpo_rlhf.config import ConfigError, add_config_arguments, load_config

if TYPE_CHECKING:
    from igpo_rlhf.config import Config

GB = 1e9
DEFAULT_GPU_MEMORY_GB = 80.0
CUDA_OVERHEAD = 1.0 * GB  # CUDA context, NCCL buffers, allocator slack per process (assumed)
DS_BUCKET = 5e8  # DeepSpeed's default reduce_bucket_size / allgather_bucket_size (elements)
DS_MAX_LIVE = 1e9  # DeepSpeed's default stage3_max_live_parameters (elements)
VLLM_ACTIVATION_RESERVE = 2.0 * GB  # what vLLM keeps for its own activations and CUDA graphs (assumed)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ALIASES_PER_QUESTION = 3  # probe-pass size assumed per belief point: aliases x (probe + answer tokens)
PROBE_TOKENS = 24


# ------------------------------------------------------------------------------------------ the model
@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs from a causal LM's config.json."""

    model_type: str
    vocab: int
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool  # Qwen3: an RMSNorm over each head's query and key

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        """From a config.json dict; ValueError naming a missing key."""
        for key in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "intermediate_size",
            "num_attention_heads",
        ):
            if not isinstance(config.get(key), int):
                raise ValueError(f"config.json has no integer {key!r}: not a decoder-only causal LM config")
        model_type = str(config.get("model_type", ""))
        heads = config["num_attention_heads"]
        attention_bias = bool(config.get("attention_bias", False))
        return cls(
            model_type=model_type,
            vocab=config["vocab_size"],
            hidden=config["hidden_size"],
            layers=config["num_hidden_layers"],
            intermediate=config["intermediate_size"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            tied=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2" or attention_bias,  # Qwen2: q, k, v always carry a bias
            o_bias=attention_bias and model_type != "qwen2",
            mlp_bias=bool(config.get("mlp_bias", False)),
            qk_norm=model_type in ("qwen3", "qwen3_moe"),
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelShape:
        """From `path/config.json`; ValueError naming model.path when there is none."""
        config_file = Path(path) / "config.json"
        if not config_file.is_file():
            raise ValueError(f"model.path={str(path)!r} has no config.json to estimate memory from")
        return cls.from_config(json.loads(config_file.read_text(encoding="utf-8")))

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def parameters(self) -> int:
        """Parameter count (a tied LM head counted once), as `sum(p.numel() for p in model.parameters())`."""
        q, kv, h, i = self.heads * self.head_dim, self.kv_dim, self.hidden, self.intermediate
        attention = h * q + 2 * h * kv + q * h
        attention += (q + 2 * kv) * self.qkv_bias + h * self.o_bias + 2 * self.head_dim * self.qk_norm
        mlp = 3 * h * i + (2 * i + h) * self.mlp_bias
        layer = attention + mlp + 2 * h  # + two RMSNorms
        embeddings = self.vocab * h * (1 if self.tied else 2)
        return self.layers * layer + h + embeddings  # + the final norm

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Keys and values of one token over every layer."""
        return 2 * self.layers * self.kv_dim * dtype_bytes

    def activation_elements_per_token_layer(self) -> int:
        """What autograd keeps of one decoder layer per token (module docstring)."""
        return 9 * self.hidden + 2 * self.kv_dim + 4 * self.intermediate


# ----------------------------------------------------------------------------------------- estimates
_COLUMNS = {
    "weights": "weights",
    "gradients": "grads",
    "optimizer": "optimizer",
    "buffers": "buffers",
    "activations": "activation",
    "logits": "logits",
    "kv_cache": "kv-cache",
    "overhead": "overhead",
}


@dataclass
class RoleMemory:
    """The estimate of one actor of a role on its GPU, in bytes per part."""

    role: str
    actors: int
    gpus: float  # resources.<role>.num_gpus
    parts: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def total(self) -> float:
        return sum(self.parts.values())


@dataclass
class GpuGroup:
    """GPUs that hold the same roles: how many, which actors (role, count per GPU) and the bytes per GPU."""

    label: str
    count: int
    members: list[tuple[str, int]]
    bytes: float
    fraction: float = 1.0  # of each GPU the group reserves (< 1: other fractional roles may share the GPU)


@dataclass
class MemoryPlan:
    """Every role's estimate, the GPU groups they make, and the problems at `gpu_memory` bytes per GPU."""

    model: ModelShape
    model_path: str
    dtype: str
    gpu_memory: float
    roles: dict[str, RoleMemory]
    groups: list[GpuGroup]
    problems: list[str]

    def table(self) -> str:
        """The plan as text: model line, one row per role, one row per GPU group."""
        m = self.model
        lines = [
            f"model: {self.model_path}  {m.parameters() / 1e9:.2f}B parameters  {self.dtype}  (vocab {m.vocab}, "
            f"hidden {m.hidden}, {m.layers} layers, MLP {m.intermediate}, heads {m.heads}/{m.kv_heads} KV, "
            f"{'tied' if m.tied else 'untied'} embeddings)",
            "",
            f"  {'per actor (GB)':<15} {'actors':>6}  {'GPUs':>4}  "
            + "".join(f"{title:>11}" for title in _COLUMNS.values())
            + f"{'total':>11}",
        ]
        for r in self.roles.values():
            cells = "".join(f"{r.parts.get(key, 0.0) / GB:>11.1f}" for key in _COLUMNS)
            lines.append(
                f"  {r.role:<15} {r.actors:>6}  {r.gpus:>4g}  {cells}{r.total / GB:>11.1f}"
                + (f"   {r.note}" if r.note else "")
            )
        lines += ["", f"per GPU ({self.gpu_memory / GB:g} GB each)"]
        for g in self.groups:
            who = " + ".join(f"{n} {role}" if n > 1 else role for role, n in g.members)
            fits = "fits" if g.bytes <= self.gpu_memory else "DOES NOT FIT"
            lines.append(f"  {g.count} x {g.label:<22} {who:<40} {g.bytes / GB:>7.1f} GB  {fits}")
        return "\n".join(lines)


def model_state_bytes(
    parameters: float, dtype: str, zero_stage: int, world_size: int, offload: bool
) -> dict[str, float]:
    """DeepSpeed's model states per rank while a backward runs: weights, gradients, optimizer (fp32 master +
    Adam moments) and ZeRO's buffers (module docstring)."""
    b, n, p = DTYPE_BYTES[dtype], world_size, parameters
    mixed = dtype != "float32"
    partitioned = zero_stage >= 1 or dtype == "bfloat16"  # BF16_Optimizer partitions like ZeRO-1
    weights = b * p / (n if zero_stage == 3 else 1)
    master = 4 * p if (mixed or zero_stage >= 1) else 0.0
    optimizer = (8 * p + master) / (n if partitioned else 1)
    if zero_stage >= 2:
        gradients = b * p / n
    elif zero_stage == 1:
        gradients = b * p + 4 * p / n
    else:  # plain fp32 gradients; bf16: BF16_Optimizer's low-precision and fp32 gradient buffers
        gradients = 4 * p if not mixed else b * p + 8 * p / n
    buffers = 0.0
    if zero_stage in (1, 2):
        buffers = min(DS_BUCKET, p) * (4 if zero_stage == 1 else b)  # the contiguous reduce bucket
    if zero_stage == 3:
        live = min(DS_MAX_LIVE, p) * b
        buffers = min(DS_BUCKET, p) * b + live
        if offload:
            weights = 0.0  # offload_param: partitions on the CPU, only the live parameters (buffers) here
    if offload:
        optimizer = 0.0
    return {"weights": weights, "gradients": gradients, "optimizer": optimizer, "buffers": buffers}


def activation_bytes(shape: ModelShape, tokens: int, dtype: str, checkpointing: bool) -> float:
    """What a forward keeps for its backward over `tokens` tokens of a micro-batch (module docstring)."""
    b = DTYPE_BYTES[dtype]
    per_token_layer = shape.activation_elements_per_token_layer() * b
    if dtype != "float32":
        per_token_layer += 2 * shape.hidden * 4  # each RMSNorm upcasts its input to fp32
    if checkpointing:  # each layer's input, and one layer recomputed at a time
        return tokens * (shape.layers * shape.hidden * b + per_token_layer)
    return tokens * shape.layers * per_token_layer


def logits_bytes(rows: int, vocab: int) -> float:
    """`action_log_probs` on `rows` hidden states at a time: float32 logits, their softmax pieces, the gradient."""
    return 3 * rows * vocab * 4


def _trained_role(cfg: Config, shape: ModelShape, role: str, parameters: float) -> RoleMemory:
    """Policy or critic: DeepSpeed model states, activations of one micro-batch, logits chunks (policy)."""
    spec, t = getattr(cfg.resources, role), cfg.train
    parts = model_state_bytes(parameters, cfg.model.dtype, t.zero_stage, spec.num_actors, t.offload)
    tokens = t.micro_batch_size * cfg.rollout.max_total_tokens
    parts["activations"] = activation_bytes(shape, tokens, cfg.model.dtype, cfg.model.gradient_checkpointing)
    if role == "policy":
        parts["logits"] = logits_bytes(min(t.logits_chunk, tokens), shape.vocab)
    parts["overhead"] = CUDA_OVERHEAD
    note = f"ZeRO-{t.zero_stage}" + (" + offload" if t.offload else "") + f", {tokens} tokens per micro-batch"
    return RoleMemory(role, spec.num_actors, spec.num_gpus, parts, note)


def _scoring_role(cfg: Config, shape: ModelShape, role: str) -> RoleMemory:
    """Scorer or reference: weights, one pass of scorer.token_budget tokens with its KV cache, logits chunks."""
    spec = getattr(cfg.resources, role)
    b, budget = DTYPE_BYTES[cfg.model.dtype], cfg.scorer.token_budget
    transient = budget * (4 * shape.hidden + 3 * shape.intermediate) * b  # one layer's q, k, v, out, MLP
    parts = {
        "weights": b * shape.parameters(),
        "activations": transient,
        "logits": logits_bytes(cfg.scorer.logits_chunk, shape.vocab) * 2 / 3,  # no gradient
        "kv_cache": budget * shape.kv_bytes_per_token(b),
        "overhead": CUDA_OVERHEAD,
    }
    if role == "scorer" and cfg.algorithm.estimator == "igpo":
        probe_queries = cfg.rollout.max_turns * ALIASES_PER_QUESTION * PROBE_TOKENS
        parts["activations"] += budget * probe_queries * b  # the probe pass's [B, 1, Q, W + Q] mask
    return RoleMemory(role, spec.num_actors, spec.num_gpus, parts, f"{budget} tokens per pass")


def _rollout_role(cfg: Config, shape: ModelShape, gpu_memory: float) -> RoleMemory:
    spec, r, b = cfg.resources.rollout, cfg.rollout, DTYPE_BYTES[cfg.model.dtype]
    if r.engine == "vllm":
        v = r.vllm
        share = v.gpu_memory_utilization * gpu_memory
        weights = 2 * shape.parameters() / v.tensor_parallel_size  # vLLM runs bfloat16
        kv = share - weights - VLLM_ACTIVATION_RESERVE
        kv_tokens = max(kv, 0.0) / (shape.kv_bytes_per_token(2) / v.tensor_parallel_size)
        parts = {"weights": weights, "activations": VLLM_ACTIVATION_RESERVE, "kv_cache": max(kv, 0.0)}
        note = f"vLLM takes {v.gpu_memory_utilization:g} of each GPU: KV cache for {kv_tokens:,.0f} tokens"
        return RoleMemory("rollout (vllm)", spec.num_actors, float(v.tensor_parallel_size), parts, note)
    rows = r.batch_size
    parts = {
        "weights": b * shape.parameters(),
        "kv_cache": rows * r.max_total_tokens * shape.kv_bytes_per_token(b),
        "logits": rows * shape.vocab * 4,
        "activations": rows * (4 * shape.hidden + 3 * shape.intermediate) * b,
        "overhead": CUDA_OVERHEAD,
    }
    return RoleMemory(
        "rollout (hf)", spec.num_actors, spec.num_gpus, parts, f"{rows} rows x {r.max_total_tokens}"
    )


def roles_of(cfg: Config) -> list[str]:
    """The roles a run places (as the trainer does)."""
    roles = ["rollout", "policy", "scorer"]
    if cfg.algorithm.kl_coef > 0:
        roles.append("reference")
    if cfg.algorithm.estimator == "ppo":
        roles.append("critic")
    return roles


def uses_gpus(cfg: Config) -> bool:
    return any(getattr(cfg.resources, r).num_gpus > 0 for r in roles_of(cfg))


def plan_memory(
    cfg: Config, gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB, shape: ModelShape | None = None
) -> MemoryPlan:
    """The estimate of every role of `cfg` and of every GPU, and what does not fit (with the knobs to turn)."""
    shape = shape or ModelShape.from_dir(cfg.model.path)
    gpu_memory = gpu_memory_gb * GB
    roles: dict[str, RoleMemory] = {}
    for role in roles_of(cfg):
        if role == "rollout":
            roles[role] = _rollout_role(cfg, shape, gpu_memory)
        elif role in ("policy", "critic"):
            backbone = shape.parameters() - (0 if shape.tied else shape.vocab * shape.hidden)
            roles[role] = _trained_role(
                cfg, shape, role, shape.parameters() if role == "policy" else backbone
            )
        else:
            roles[role] = _scoring_role(cfg, shape, role)

    groups = _gpu_groups(cfg, roles, gpu_memory)
    problems = [_problem(cfg, g, roles, gpu_memory) for g in groups if g.bytes > gpu_memory]
    if "rollout" in roles and cfg.rollout.engine == "vllm" and roles["rollout"].parts["kv_cache"] <= 0:
        problems.append(
            f"the vLLM engines' share (rollout.vllm.gpu_memory_utilization={cfg.rollout.vllm.gpu_memory_utilization:g}"
            f" of {gpu_memory_gb:g} GB) does not hold the weights ({roles['rollout'].parts['weights'] / GB:.1f} GB per "
            "GPU) and its activations: raise rollout.vllm.gpu_memory_utilization or rollout.vllm.tensor_parallel_size"
        )
    return MemoryPlan(shape, cfg.model.path, cfg.model.dtype, gpu_memory, roles, groups, problems)


def _gpu_groups(cfg: Config, roles: dict[str, RoleMemory], gpu_memory: float) -> list[GpuGroup]:
    """The GPUs of the run as placement.py reserves them: colocated bundles, whole GPUs per rank, fractions
    that Ray may pack together (roles of one actor keep fractions; see placement.py)."""
    groups: list[GpuGroup] = []
    colocated = [
        r for r in ("policy", "reference", "critic", "scorer") if r in roles and cfg.resources.colocate
    ]
    colocated = [r for r in colocated if roles[r].gpus > 0]
    if colocated:
        n = roles[colocated[0]].actors
        fraction = 1.0 if n > 1 else sum(roles[r].gpus for r in colocated)
        total = sum(roles[r].total for r in colocated)
        groups.append(GpuGroup("colocated bundle", n, [(r, 1) for r in colocated], total, fraction))
    for name, r in roles.items():
        if name in colocated or r.gpus <= 0:
            continue
        if name == "rollout" and cfg.rollout.engine == "vllm":
            v = cfg.rollout.vllm
            share = v.gpu_memory_utilization * gpu_memory
            fraction = 1.0 if r.actors > 1 or v.tensor_parallel_size > 1 else min(1.0, r.gpus)
            groups.append(
                GpuGroup("vLLM engine GPU", r.actors * v.tensor_parallel_size, [(r.role, 1)], share, fraction)
            )
        elif (name in ("policy", "critic") and r.actors > 1) or r.gpus >= 1:
            groups.append(GpuGroup(f"{name} GPU", r.actors * math.ceil(r.gpus), [(r.role, 1)], r.total))
        else:  # fractional: Ray may pack this many actors of the role onto one GPU
            per_gpu = min(r.actors, math.floor(1 / r.gpus + 1e-9))
            count = math.ceil(r.actors / per_gpu)
            groups.append(
                GpuGroup(f"{name} GPU", count, [(r.role, per_gpu)], per_gpu * r.total, per_gpu * r.gpus)
            )
    # groups on one GPU each that reserve a fraction of it may land on the same GPU: count them together
    shared = [g for g in groups if g.count == 1 and g.fraction < 1.0]
    merged, used = [], 0.0
    for g in sorted(shared, key=lambda g: -g.fraction):
        if used + g.fraction <= 1.0 + 1e-9:
            merged.append(g)
            used += g.fraction
    if len(merged) > 1:
        groups = [g for g in groups if g not in merged]
        members = [m for g in merged for m in g.members]
        groups.append(GpuGroup("shared GPU", 1, members, sum(g.bytes for g in merged), used))
    return groups


def _knobs(cfg: Config, role: str) -> str:
    """The settings that lower a role's memory, leaving out those already at their low-memory value."""
    t = cfg.train
    trained = [
        "train.zero_stage=3" if t.zero_stage != 3 else "",
        "train.offload=true" if not t.offload else "",
        "model.gradient_checkpointing=true" if not cfg.model.gradient_checkpointing else "",
        "a smaller train.micro_batch_size or rollout.max_total_tokens",
        f"more resources.{role}.num_actors (ZeRO partitions over them)"
        if role in ("policy", "critic")
        else "",
    ]
    knobs = {
        "policy": [*trained, "a smaller train.logits_chunk"],
        "critic": trained,
        "scorer": ["a smaller scorer.token_budget or scorer.logits_chunk"],
        "reference": ["a smaller scorer.token_budget or scorer.logits_chunk (its passes use the scorer's)"],
        "rollout (hf)": ["a smaller rollout.batch_size or rollout.max_total_tokens"],
        "rollout (vllm)": ["a smaller rollout.vllm.gpu_memory_utilization"],
    }[role]
    return ", ".join(k for k in knobs if k)


def _problem(cfg: Config, group: GpuGroup, roles: dict[str, RoleMemory], gpu_memory: float) -> str:
    parts = ", ".join(f"{role} {roles[_key(role)].total * n / GB:.1f} GB" for role, n in group.members)
    knobs = "; ".join(f"{role}: {_knobs(cfg, role)}" for role, _ in group.members)
    more = " Or spread the roles: resources.colocate=false on more GPUs." if len(group.members) > 1 else ""
    return (
        f"a {group.label} needs about {group.bytes / GB:.1f} GB ({parts}) but has {gpu_memory / GB:g} GB. "
        f"Turn: {knobs}.{more}"
    )


def _key(role: str) -> str:
    return "rollout" if role.startswith("rollout") else role


def check_fits(cfg: Config, gpu_memory_gb: float) -> MemoryPlan:
    """`plan_memory`, raising ConfigError with the plan and what to turn when a GPU would not hold its roles."""
    plan = plan_memory(cfg, gpu_memory_gb)
    if plan.problems:
        raise ConfigError(
            "the layout does not fit the GPUs (igpo plan estimate):\n"
            + "\n".join(f"  - {p}" for p in plan.problems)
            + "\n\n"
            + plan.table()
            + "\n\n(resources.gpu_memory_gb / igpo plan --gpu-memory-gb set the GPU size)"
        )
    return plan


def detected_gpu_memory_gb() -> float | None:
    """Memory of this machine's first GPU in GB, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / GB


def main(argv: list[str] | None = None) -> int:
    """Estimate the GPU memory of every role of a run and refuse (exit 2) a layout that cannot fit."""
    ap = argparse.ArgumentParser(prog="igpo plan", description=main.__doc__)
    add_config_arguments(ap, required=True)
    ap.add_argument(
        "--gpu-memory-gb",
        type=float,
        default=None,
        help=f"memory of one GPU (default: resources.gpu_memory_gb, else {DEFAULT_GPU_MEMORY_GB:g})",
    )
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        gpu_gb = args.gpu_memory_gb or cfg.resources.gpu_memory_gb or DEFAULT_GPU_MEMORY_GB
        if gpu_gb <= 0:
            raise ConfigError(f"--gpu-memory-gb={gpu_gb:g} must be > 0")
        plan = plan_memory(cfg, gpu_gb)
    except (ConfigError, ValueError) as exc:
        print(f"igpo plan: {exc}", file=sys.stderr)
        return 2
    print(plan.table())
    if not uses_gpus(cfg):
        print("\nno role asks for a GPU (resources.<role>.num_gpus): nothing to check")
        return 0
    if plan.problems:
        print("\ndoes not fit:\n" + "\n".join(f"  - {p}" for p in plan.problems), file=sys.stderr)
        return 2
    print(f"\nfits: every GPU holds its roles within {gpu_gb:g} GB (an estimate: keep a margin)")
    return 0


def startup_check(cfg: Config) -> MemoryPlan | None:
    """`igpo train`'s check when roles use GPUs: ConfigError (exit 2) with the plan and the knobs when a GPU
    would not hold its roles; one line otherwise. GPU size: resources.gpu_memory_gb, else this machine's
    first GPU, else 80 GB. None when no role asks for a GPU."""
    if not uses_gpus(cfg):
        return None
    gpu_gb = cfg.resources.gpu_memory_gb or detected_gpu_memory_gb() or DEFAULT_GPU_MEMORY_GB
    plan = check_fits(cfg, gpu_gb)
    fullest = max(plan.groups, key=lambda g: g.bytes / plan.gpu_memory)
    print(
        f"memory plan: the fullest GPU ({fullest.label}) needs about {fullest.bytes / GB:.1f} of {gpu_gb:g} GB "
        "(`igpo plan -c CONFIG` prints the table)",
        flush=True,
    )
    return plan

"""One validated configuration for the whole system.

Every field has a type, a default and a help string; each default is set here and only here.
A config is a YAML file whose top-level keys are the sections below, plus `--set a.b=c`
overrides (values parsed as YAML, so `--set rollout.n_samples=8` gives an int). An unknown key, a
wrong type or an out-of-range value is a `ConfigError` naming the dotted key and what is accepted.

    cfg = load_config("configs/demo.yaml", ["algorithm.estimator=grpo"])
    cfg.algorithm.estimator  # "grpo"

`igpo config -c FILE [--set ...]` prints the resolved config; `igpo config --schema` every field
with its help.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from igpo_rlhf.scoring.budget import DEFAULT_LOGITS_CHUNK, DEFAULT_TOKEN_BUDGET
from services.search_proxy.settings import ProxySettings


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


# --------------------------------------------------------------------------------------------- model
class ModelConfig(_Section):
    path: str = Field(
        "runs/tiny-model",
        description="Policy checkpoint: a local directory in Hugging Face format (config + weights + tokenizer). "
        "`igpo make-tiny-model DIR` builds the demo one. No hub downloads.",
    )
    ref_path: str | None = Field(
        None, description="Reference model for the KL term; defaults to `path` (the initial policy)."
    )
    critic_path: str | None = Field(
        None,
        description="Critic initialisation (estimator=ppo only); defaults to `path` with a fresh value head.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Parameter dtype of every model copy (bfloat16 on GPUs; float32 on CPU)."
    )
    attn_implementation: Literal["sdpa", "flash_attention_2", "eager"] = Field(
        "sdpa",
        description="Attention kernel for training and reference passes. The belief scorer always uses sdpa "
        "(it needs a float 4D mask).",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the policy backward pass."
    )
    trust_remote_code: bool = Field(False, description="Passed to from_pretrained for custom architectures.")


# ----------------------------------------------------------------------------------------- algorithm
# The IGPO reference code's probe (GuoqingWang1/IGPO, scrl/llm_agent/generation.py): it closes the reasoning
# before the answer tag, and the answer follows on its own line (`<answer>\nX\n</answer>`).
PAPER_ANSWER_PROBE = "\nNow there's enough information to answer\n</think>\n<answer>"
DEFAULT_ANSWER_SEPARATOR = " "  # `<answer> Beijing </answer>`, the Search-R1 prompt's example
# `algorithm.preset`: named sets of algorithm fields, applied under the keys the config sets itself.
ALGORITHM_PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    # the reference code's belief probe (its answers are written on their own line: pair it with a prompt
    # whose example does that, or algorithm.answer_separator follows the prompt's example)
    "paper_probe": {"answer_probe": PAPER_ANSWER_PROBE},
    # the authors' 2026 recipe (debajoycs98/IGPO, CHANGELOG 2026-02-01 and its train scripts)
    "authors_2026": {"ig_kind": "log_prob_diff", "norm": "separate"},
}
_EXAMPLE_ANSWER = re.compile(r"<answer>([ \t\r\n]*)(?=[^\s<])")  # `<answer>`, whitespace, the answer


def prompt_answer_separator(*prompt_texts: str | None) -> str | None:
    """The whitespace between `<answer>` and the answer in the first example answer the prompt texts show
    (`For example, <answer> Beijing </answer>` gives " "), or None when they show none."""
    for text in prompt_texts:
        found = _EXAMPLE_ANSWER.search(text or "")
        if found:
            return found.group(1)
    return None


class AlgorithmConfig(_Section):
    preset: Literal["none", "paper_probe", "authors_2026"] = Field(
        "none",
        description="Named settings applied under the keys this config sets itself: paper_probe (the IGPO "
        "reference code's answer_probe, which closes </think> before <answer>), authors_2026 (the authors' "
        "2026 recipe: ig_kind log_prob_diff, norm separate). See ALGORITHM_PRESETS.",
    )
    estimator: Literal["igpo", "grpo", "ppo"] = Field(
        "igpo",
        description="Advantage estimator: igpo (turn-level information gain + outcome), grpo (outcome only, "
        "group-normalised), ppo (GAE with a critic).",
    )
    ig_kind: Literal["prob_diff", "log_prob_diff"] = Field(
        "prob_diff",
        description="IG reward r_{i,t}: b_t - b_{t-1} (the paper's formula) or log b_t - log b_{t-1}.",
    )
    norm: Literal["joint", "separate"] = Field(
        "joint",
        description="Group normalisation pool: joint (all turn rewards of the group together) or separate "
        "(IG rewards among IG rewards, outcomes among outcomes).",
    )
    ig_coef: float = Field(
        1.0,
        ge=0.0,
        description="Weight of the normalised IG rewards r̃_{i,t<T} in Â (1: the paper; ours, not the paper's: "
        "< 1 trusts the outcome more; with norm separate, 0 is exactly GRPO). bench/RESULTS.md, Learning.",
    )
    gamma: float = Field(1.0, ge=0.0, le=1.0, description="Turn discount γ in Â_{i,t} = Σ_k γ^{k-t} r̃_{i,k}.")
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0, description="GAE λ (estimator=ppo only).")
    gae_gamma: float = Field(
        1.0, ge=0.0, le=1.0, description="Token-level discount for GAE (estimator=ppo only)."
    )
    alias_reduce: Literal["first", "max"] = Field(
        "max",
        description="Belief over gold aliases: max (best alias; ours) or first (the paper's code).",
    )
    answer_probe: str = Field(
        "<answer>",
        description="Answer probe: the text that opens an answer in the template; the belief is the mean "
        "log-prob of the gold answer after context + probe. Empty: the answer right after the context.",
    )
    answer_separator: str | None = Field(
        None,
        description="Text between the probe and the gold answer when the belief is scored; it must be what the "
        "model writes after <answer>. Null: the whitespace the prompt's example answer shows "
        "(`<answer> Beijing </answer>`: ' '; `<answer>\\nBeijing`: newline), ' ' without an example.",
    )
    outcome_metric: Literal["f1", "em", "cover_em"] = Field(
        "f1", description="Outcome reward r_{i,T}: F1 (default), exact match or cover exact match."
    )
    f1_variant: Literal["squad", "igpo"] = Field(
        "squad",
        description="F1 flavour: squad normalisation, or the IGPO paper's scorer (to compare with its numbers).",
    )
    format_penalty: float = Field(
        -2.0, le=0.0, description="Outcome reward of a trajectory without a well-formed answer."
    )
    adv_eps: float = Field(1e-6, gt=0.0, description="ε in r̃ = (r - mean) / (std + ε).")
    clip_eps_low: float = Field(0.2, gt=0.0, lt=1.0, description="PPO ratio clip below: 1 - ε_low.")
    clip_eps_high: float = Field(0.2, gt=0.0, description="PPO ratio clip above: 1 + ε_high.")
    dual_clip: float | None = Field(
        None, gt=1.0, description="Dual-clip constant c (> 1) for negative advantages; null disables it."
    )
    kl_coef: float = Field(
        0.001, ge=0.0, description="Coefficient of the KL-to-reference loss term (0 disables)."
    )
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k3", description="Per-token KL estimator.")
    entropy_coef: float = Field(0.0, ge=0.0, description="Entropy bonus coefficient (0 disables).")
    loss_agg: Literal["token_mean", "seq_mean"] = Field(
        "token_mean",
        description="Loss aggregation over tokens: token_mean or seq_mean (mean of per-sequence means).",
    )
    value_clip: float = Field(0.2, gt=0.0, description="Critic value clip (estimator=ppo only).")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """`preset`'s fields, under the ones the config sets itself (those win)."""
        if isinstance(data, dict) and data.get("preset") in ALGORITHM_PRESETS:
            data = {**ALGORITHM_PRESETS[data["preset"]], **data}
        return data


# ------------------------------------------------------------------------------------------- rollout
SEARCH_R1_PROMPT = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every time you get "
    "new information. After reasoning, if you find you lack some knowledge, you can call a search engine by "
    "<search> query </search> and it will return the top searched results between <information> and "
    "</information>. You can search as many times as you want. If you find no further external knowledge "
    "needed, you can directly provide the answer inside <answer> and </answer>, without detailed illustrations. "
    "For example, <answer> Beijing </answer>. Question: {question}\n"
)


# The tool_call protocol's defaults (DeepResearcher style): the chat template shows the `search` tool's schema
# (or the protocol adds it to the system message when the template cannot); the system message says how a turn
# looks. No <search> tags: those are search_r1's, and the tool_call parser rejects them.
TOOL_CALL_SYSTEM_PROMPT = (
    "You answer questions by researching them with a search tool. Work in turns. In every turn, first reason "
    "inside <think> and </think> about what you know and what is still missing, then do exactly one of:\n"
    "- call the search tool with one or more queries; its results come back in the next message;\n"
    "- give the final answer inside <answer> and </answer>: only the answer itself (a name, a number or a "
    "short phrase) without explanation, for example <answer> Beijing </answer>. Answer a yes-or-no question "
    "with yes or no.\n"
    "Search as often as you need before you answer."
)
TOOL_CALL_PROMPT = "Question: {question}"
# each protocol's call tag; a prompt that asks for another protocol's tag makes every search turn invalid
PROTOCOL_CALL_TAGS = {"search_r1": "<search>", "tool_call": "<tool_call>"}


class VLLMConfig(_Section):
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per vLLM engine.")
    gpu_memory_utilization: float = Field(0.5, gt=0.0, le=1.0, description="vLLM KV-cache memory share.")
    enable_prefix_caching: bool = Field(True, description="Reuse KV of shared prefixes across turns.")
    enforce_eager: bool = Field(False, description="Disable CUDA graphs (debugging).")
    max_model_len: int | None = Field(None, ge=1, description="Defaults to rollout.max_total_tokens.")
    sync_backend: Literal["nccl", "gloo"] = Field(
        "nccl", description="Weight broadcast backend to the engines."
    )


class OpenAIEngineConfig(_Section):
    base_url: str = Field(
        "http://127.0.0.1:8000/v1",
        description="Base URL of the OpenAI-compatible server, up to and including /v1 (vLLM, `transformers "
        "serve`, a hosted API).",
    )
    model: str | None = Field(
        None, description="Model name sent in every request; null: model.path (what local servers expect)."
    )
    mode: Literal["completions", "chat"] = Field(
        "completions",
        description="completions: POST /completions with the decoded context (any protocol, exact prompt "
        "text); chat: POST /chat/completions with the context mapped to messages (protocol=tool_call only).",
    )
    api_key_env: str | None = Field(
        None,
        description="Environment variable holding the API key (sent as a bearer token; never logged or "
        "recorded); null: no key.",
    )
    concurrency: int = Field(8, ge=1, description="Requests in flight at once.")
    timeout_s: float = Field(120.0, gt=0.0, description="Timeout of one request.")
    retries: int = Field(
        3, ge=0, description="Retries of a failed request (connection error, timeout, 429, 5xx)."
    )
    backoff_s: float = Field(
        1.0, ge=0.0, description="First retry delay; doubled each retry (a Retry-After header wins)."
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra request fields, e.g. {include_stop_str_in_output: true} for vLLM servers.",
    )


class RolloutConfig(_Section):
    protocol: Literal["search_r1", "tool_call"] = Field(
        "search_r1",
        description="Agent protocol: search_r1 tags (<search>, <information>, <answer>) or the chat template's "
        "tool calls with a `search` tool.",
    )
    engine: Literal["hf", "vllm", "openai"] = Field(
        "hf",
        description="Generator: hf (transformers generate; CPU/GPU), vllm (GPU only) or openai (an "
        "OpenAI-compatible HTTP endpoint, `rollout.openai`; `igpo eval` only: weights cannot be pushed to it).",
    )
    prompt_template: str = Field(
        SEARCH_R1_PROMPT,
        description="User prompt; `{question}` is replaced by the question. Default per protocol: "
        "SEARCH_R1_PROMPT (search_r1), TOOL_CALL_PROMPT (tool_call).",
    )
    system_prompt: str | None = Field(
        None,
        description="System message (chat templates only). Default per protocol: none (search_r1), "
        "TOOL_CALL_SYSTEM_PROMPT (tool_call).",
    )
    use_chat_template: bool = Field(
        False, description="Wrap the prompt with the tokenizer's chat template (instruct models)."
    )
    n_samples: int = Field(16, ge=1, description="Rollouts per prompt: the group size n.")
    max_turns: int = Field(10, ge=1, description="Turns per trajectory before it is cut off.")
    temperature: float = Field(1.0, gt=0.0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(-1, ge=-1, description="Top-k sampling (-1 disables).")
    max_new_tokens: int = Field(512, ge=1, description="Generated tokens per turn.")
    max_prompt_tokens: int = Field(1024, ge=1, description="Longer prompts are an error naming the row.")
    max_total_tokens: int = Field(8192, ge=16, description="Prompt + all turns + observations; then cut off.")
    max_observation_tokens: int = Field(
        512, ge=1, description="Observations are truncated to this many tokens."
    )
    search_top_k: int = Field(3, ge=1, le=50, description="Passages per search query.")
    observation_template: str = Field(
        "\n\n<information>{documents}</information>\n\n",
        description="Observation text after a search turn; `{documents}` is the rendered passages.",
    )
    document_template: str = Field(
        "Doc {rank}(Title: {title}) {text}\n",
        description="One passage inside an observation: fields {rank}, {title}, {text}, {query}.",
    )
    batch_size: int = Field(64, ge=1, description="Trajectories generated together per engine call.")
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description="vLLM engine options (engine=vllm).")
    openai: OpenAIEngineConfig = Field(
        default_factory=OpenAIEngineConfig, description="OpenAI-compatible endpoint (engine=openai)."
    )

    @model_validator(mode="before")
    @classmethod
    def _protocol_prompts(cls, data: Any) -> Any:
        """protocol=tool_call without prompt_template / system_prompt gets the tool_call prompts."""
        if isinstance(data, dict) and data.get("protocol") == "tool_call":
            data = {"prompt_template": TOOL_CALL_PROMPT, "system_prompt": TOOL_CALL_SYSTEM_PROMPT, **data}
        return data

    @model_validator(mode="after")
    def _prompt_matches_protocol(self) -> RolloutConfig:
        for other, tag in PROTOCOL_CALL_TAGS.items():
            if other == self.protocol:
                continue
            for key in ("prompt_template", "system_prompt"):
                if tag in (getattr(self, key) or ""):
                    raise ValueError(
                        f"rollout.{key} asks for {tag} tags, which are protocol {other}'s; with "
                        f"rollout.protocol={self.protocol} every such turn is invalid. Use a prompt for "
                        f"{self.protocol} (its default: leave rollout.{key} unset) or set rollout.protocol={other}"
                    )
        return self


# -------------------------------------------------------------------------------------------- search
class SearchFailuresConfig(_Section):
    check_timeout_s: float = Field(
        5.0,
        gt=0.0,
        description="Timeout of each request of the search backend check (GET /healthz, then one query by POST "
        "/search; no retries), run before Ray starts and while waiting for a failing backend to recover.",
    )
    max_error_rate: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="A step whose rollouts' searches failed more often than this (failed / all searches) is not "
        "trained on: the trainer waits for the backend and rolls the step out again. 1 disables the limit.",
    )
    window_steps: int = Field(
        10, ge=1, description="Steps (trained on) over which max_window_error_rate is watched."
    )
    max_window_error_rate: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Searches failed over the last window_steps steps, this one included, above this rate: the "
        "step is not trained on, as for max_error_rate (watched once window_steps steps ran). 1 disables it.",
    )
    recovery_timeout_s: float = Field(
        300.0,
        gt=0.0,
        description="How long the trainer waits for a failing backend (from the first batch it rejected) before "
        "it stops with a checkpoint (exit code 4; --resume continues).",
    )
    backoff_s: float = Field(
        2.0, gt=0.0, description="Wait before the first check of a failing backend; doubled after each."
    )
    max_backoff_s: float = Field(60.0, gt=0.0, description="Longest wait between two checks.")


class SearchConfig(_Section):
    url: str | None = Field(
        None,
        description="URL of a running search proxy (or any Search-R1 /retrieve-compatible server through our "
        "proxy's `remote` backend). Null: the driver starts a local proxy with `proxy` settings.",
    )
    proxy: ProxySettings = Field(
        default_factory=ProxySettings, description="Settings of the proxy the driver starts when url is null."
    )
    timeout_s: float = Field(30.0, gt=0.0, description="Client timeout per search request.")
    retries: int = Field(2, ge=0, description="Client retries (with backoff) before an error observation.")
    token_env: str | None = Field(
        None, description="Environment variable holding the proxy's bearer token, when auth is on."
    )
    failures: SearchFailuresConfig = Field(
        default_factory=SearchFailuresConfig,
        description="Search failures: the check at start-up, and when a step's rollouts are not trained on.",
    )


# ---------------------------------------------------------------------------------------------- data
class WorldConfig(_Section):
    dir: str = Field(
        "runs/world",
        description="Directory the world is rendered into (corpus.jsonl, train/test/demos.jsonl, world.json); "
        "`world:` data entries read it and render it there first when it is missing or was built with "
        "other settings. The search proxy serves its corpus.jsonl.",
    )
    seed: int = Field(0, description="Seed of the built-in fictional world (same seed, same world).")
    n_people: int = Field(
        120, ge=4, description="People in the fictional knowledge base (cities, organisations scale with it)."
    )
    n_train: int = Field(400, ge=1, description="Training questions rendered from the world.")
    n_test: int = Field(100, ge=1, description="Held-out questions rendered from the world.")
    n_demos: int = Field(
        600, ge=1, description="Questions with demonstration trajectories (the tiny model's warm start)."
    )
    max_hops: int = Field(3, ge=1, le=3, description="Questions take 1 to max_hops searches.")
    demo_skip_frac: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of demonstrations that skip searching and answer at once with the entity the "
        "question names (always wrong): a warm start that sometimes answers without looking, whose choice "
        "RL can fix (bench/RESULTS.md, 'Why the demo did not learn').",
    )
    demo_stop_frac: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of demonstrations that stop after k < hops searches and answer with the entity "
        "reached (wrong): a warm start that sometimes quits a multi-hop chain early.",
    )


class DataConfig(_Section):
    train: list[str] = Field(
        default_factory=lambda: ["world:train"],
        description="Training question files: DeepResearcher/Search-R1 parquet, R1-Searcher or our jsonl; "
        "`world:train` / `world:test` are the built-in world's splits.",
    )
    eval: list[str] = Field(default_factory=list, description="Evaluation question files (same formats).")
    format: Literal["auto", "deepresearcher", "search_r1", "r1searcher", "jsonl"] = Field(
        "auto", description="Row format of the files; auto detects it from the columns."
    )
    max_train_samples: int | None = Field(None, ge=1, description="Use only the first N training questions.")
    shuffle: bool = Field(
        True, description="Shuffle the training questions each epoch (seeded by train.seed)."
    )
    world: WorldConfig = Field(
        default_factory=WorldConfig, description="The built-in world (`world:` entries)."
    )


# --------------------------------------------------------------------------------------------- train
class CollapseConfig(_Section):
    f1_drop: float = Field(
        0.3,
        gt=0.0,
        description="Collapse when held-out F1 (eval/f1, at each validation) or the training F1 averaged over "
        "`window` steps falls more than this (absolute) below its best so far.",
    )
    window: int = Field(5, ge=1, description="Steps averaged for the training-F1 signal.")
    min_steps: int = Field(
        10, ge=1, description="Steps before the training-F1 signal is watched (its early mean is noisy)."
    )
    kl_max: float | None = Field(
        1.0,
        gt=0.0,
        description="Collapse when policy/kl (KL to the reference) exceeds this; null: not watched.",
    )
    entropy_min: float | None = Field(
        None,
        ge=0.0,
        description="Collapse when policy/entropy falls below this (nats/token); null: not watched.",
    )
    entropy_max: float | None = Field(
        None,
        gt=0.0,
        description="Collapse when policy/entropy rises above this (nats/token); null: not watched.",
    )
    lr_factor: float = Field(
        0.5, gt=0.0, lt=1.0, description="on_collapse=rollback: the learning rate is multiplied by this."
    )
    max_rollbacks: int = Field(
        3,
        ge=1,
        description="on_collapse=rollback: after this many rollbacks a further collapse stops the run.",
    )


class TimeoutsConfig(_Section):
    start_s: float = Field(
        3600.0,
        gt=0.0,
        description="Actor start-up (model loads, DeepSpeed init) and checkpoint loads; past it the run stops "
        "naming the actor (exit code 6).",
    )
    rollout_s: float = Field(
        3600.0, gt=0.0, description="A rollout phase: a step's or a validation's generate."
    )
    call_s: float = Field(
        3600.0,
        gt=0.0,
        description="Every other actor call: scoring, reference, values, update, weight sync, checkpoint save.",
    )


class TrainConfig(_Section):
    steps: int = Field(100, ge=1, description="Training steps (one step = prompts_per_step × n rollouts).")
    prompts_per_step: int = Field(32, ge=1, description="Prompts sampled per step.")
    lr: float = Field(1e-6, gt=0.0, description="Policy learning rate.")
    critic_lr: float = Field(9e-6, gt=0.0, description="Critic learning rate (estimator=ppo only).")
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "linear"] = Field(
        "constant", description="Learning-rate schedule."
    )
    warmup_steps: int = Field(0, ge=0, description="Warmup optimiser steps.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    grad_clip: float = Field(1.0, gt=0.0, description="Gradient norm clip.")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each step's rollouts.")
    micro_batch_size: int = Field(4, ge=1, description="Sequences per forward/backward on each policy actor.")
    mini_batches: int = Field(
        1, ge=1, description="Optimiser steps per epoch (the step's rollouts split evenly)."
    )
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage of policy and critic.")
    offload: bool = Field(False, description="DeepSpeed optimizer offload to CPU (GPU runs).")
    logits_chunk: int = Field(
        DEFAULT_LOGITS_CHUNK,
        ge=1,
        description="Policy training pass: hidden states projected to the vocabulary at a time, at action "
        "positions only ([chunk, V] float32 logits at most; recomputed in backward, never [B, L, V]).",
    )
    seed: int = Field(42, description="Seed of data order, sampling and initialisation.")
    on_collapse: Literal["stop", "rollback", "ignore"] = Field(
        "stop",
        description="When the run collapses (train.collapse thresholds): stop with a message, keeping the last "
        "good checkpoint; rollback to the last good checkpoint with a lower learning rate; or ignore.",
    )
    collapse: CollapseConfig = Field(
        default_factory=CollapseConfig, description="What counts as a collapse (train.on_collapse)."
    )
    timeouts: TimeoutsConfig = Field(
        default_factory=TimeoutsConfig,
        description="Seconds the driver waits on actors before it stops the run naming the stuck one.",
    )


# ----------------------------------------------------------------------------------------- resources
class RoleResources(_Section):
    num_actors: int = Field(1, ge=1, description="Actors in this role.")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs per actor (fractions allowed when colocated).")
    num_cpus: float = Field(1.0, gt=0.0, description="CPUs per actor (Ray logical CPUs).")


class ResourcesConfig(_Section):
    ray_address: str | None = Field(
        None, description="Ray cluster address ('auto' under `ray job submit`); null starts a local Ray."
    )
    num_gpus: int | None = Field(
        None,
        ge=0,
        description="GPUs a local Ray started by `igpo train` may use (`make train GPUS=N`); null: all it "
        "detects. Ignored when joining a cluster.",
    )
    gpu_memory_gb: float | None = Field(
        None,
        gt=0.0,
        description="Memory of one GPU (GB) for the memory check `igpo train` runs at start-up when roles use "
        "GPUs (`igpo plan`); null: the driver's first GPU when it sees one, else 80.",
    )
    rollout: RoleResources = Field(default_factory=RoleResources, description="Rollout (generator) actors.")
    policy: RoleResources = Field(default_factory=RoleResources, description="DeepSpeed policy actors.")
    reference: RoleResources = Field(default_factory=RoleResources, description="Frozen reference actors.")
    critic: RoleResources = Field(default_factory=RoleResources, description="Critic actors (ppo only).")
    scorer: RoleResources = Field(default_factory=RoleResources, description="Belief scorer actors.")
    colocate: bool = Field(
        False,
        description="Place policy, reference, critic and scorer actors on the same GPUs (one placement group).",
    )


# ---------------------------------------------------------------------------------------------- eval
class EvalConfig(_Section):
    every_n_steps: int = Field(
        0,
        ge=0,
        description="Training-time validation on data.eval every N steps (and at step 0 and at the end); "
        "0 disables it.",
    )
    subset_size: int | None = Field(
        256,
        ge=1,
        description="Held-out questions used for validation during training: a fixed subset of data.eval "
        "drawn with subset_seed (the same questions every time); null: all of them.",
    )
    subset_seed: int = Field(0, description="Seed of the validation subset.")
    n_samples: int = Field(
        1,
        ge=1,
        description="Rollouts per question: 1 (greedy); K > 1 with temperature > 0 gives avg@K and pass@K.",
    )
    temperature: float = Field(0.0, ge=0.0, description="Sampling temperature of evaluation; 0 is greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass of evaluation.")
    top_k: int = Field(-1, ge=-1, description="Top-k of evaluation (-1 disables).")
    seed: int = Field(0, description="Sampling seed of evaluation (used when temperature > 0).")
    limit_per_source: int | None = Field(
        None, ge=1, description="`igpo eval`: only the first N questions of each source."
    )
    sources: list[str] | None = Field(
        None, description="`igpo eval`: only these sources (data_source names, file stems or world splits)."
    )
    chunk_size: int = Field(
        32,
        ge=1,
        description="`igpo eval`: questions rolled out together; each finished chunk is appended to "
        "rollouts.jsonl, and a rerun continues from the last complete chunk.",
    )


class ScorerConfig(_Section):
    token_budget: int = Field(
        DEFAULT_TOKEN_BUDGET,
        ge=64,
        description="Tokens per scorer forward pass; trajectories are split to stay under it.",
    )
    logits_chunk: int = Field(
        DEFAULT_LOGITS_CHUNK,
        ge=1,
        description="Scorer and reference passes: hidden states projected to the vocabulary at a time "
        "([chunk, V] float32 logits at most).",
    )


# ------------------------------------------------------------------------------------------- logging
class LoggingConfig(_Section):
    run_dir: str = Field(
        "runs/igpo", description="Metrics, TensorBoard logs, rollouts and checkpoints go here."
    )
    tensorboard: bool = Field(True, description="Write TensorBoard event files under run_dir/tensorboard.")
    wandb_project: str | None = Field(None, description="Also log to Weights & Biases under this project.")
    wandb_run_name: str | None = Field(None, description="W&B run name (defaults to the run_dir name).")
    save_rollouts: bool = Field(True, description="Save every step's rollouts as JSON lines for the viewer.")
    progress_bar: bool = Field(
        True,
        description="A progress bar over the run on stderr (when stderr is a terminal; logs get the per-step lines only).",
    )


class CheckpointConfig(_Section):
    every_n_steps: int = Field(10, ge=1, description="Save a checkpoint every N steps (and at the end).")
    keep_last: int = Field(2, ge=1, description="Checkpoints kept; older ones are deleted.")


# -------------------------------------------------------------------------------------------- config
class Config(_Section):
    """The whole system's configuration."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="Model checkpoints and dtype.")
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig, description="IGPO / GRPO / PPO.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Multi-turn agent rollouts.")
    search: SearchConfig = Field(default_factory=SearchConfig, description="The search proxy.")
    data: DataConfig = Field(default_factory=DataConfig, description="Training questions.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation.")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="Ray actors per role.")
    scorer: ScorerConfig = Field(default_factory=ScorerConfig, description="Belief scorer.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Metrics and rollouts.")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="Checkpointing.")
    eval: EvalConfig = Field(
        default_factory=EvalConfig, description="Evaluation: `igpo eval` and validation during training."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        r = self.rollout
        if r.max_prompt_tokens >= r.max_total_tokens:
            raise ValueError(
                f"rollout.max_prompt_tokens ({r.max_prompt_tokens}) must be below "
                f"rollout.max_total_tokens ({r.max_total_tokens})"
            )
        if self.algorithm.estimator in ("igpo", "grpo") and r.n_samples < 2:
            raise ValueError(
                f"rollout.n_samples is {r.n_samples}; estimator={self.algorithm.estimator} normalises within "
                "groups of rollouts of one prompt, so it needs n_samples >= 2"
            )
        if r.engine == "vllm" and self.resources.rollout.num_gpus <= 0:
            raise ValueError(
                "rollout.engine=vllm needs resources.rollout.num_gpus > 0 (vLLM runs on GPUs only)"
            )
        if r.protocol == "tool_call" and not r.use_chat_template:
            raise ValueError(
                "rollout.protocol=tool_call renders tool calls and tool messages through the tokenizer's chat "
                "template: set rollout.use_chat_template=true (or use protocol=search_r1)"
            )
        if "{question}" not in r.prompt_template:
            raise ValueError("rollout.prompt_template must contain the placeholder {question}")
        if "{documents}" not in r.observation_template:
            raise ValueError("rollout.observation_template must contain the placeholder {documents}")
        separator = self.algorithm.answer_separator
        shown = prompt_answer_separator(r.system_prompt, r.prompt_template)
        if separator is not None and shown is not None and separator != shown:
            raise ValueError(
                f"algorithm.answer_separator={separator!r}, but the prompt's example answer (rollout.prompt_template"
                f" / rollout.system_prompt) puts {shown!r} after <answer>, and the model writes answers like the "
                "example: set algorithm.answer_separator to null (follow the prompt) or change the prompt"
            )
        self._check_training_layout()
        return self

    def _check_training_layout(self) -> None:
        """Every policy (and critic) rank takes the same number of rollouts per optimiser step, and every
        hf rollout actor whole prompts."""
        t = self.train
        rollouts = t.prompts_per_step * self.rollout.n_samples
        roles = ["policy", "critic"] if self.algorithm.estimator == "ppo" else ["policy"]
        for role in roles:
            ranks = getattr(self.resources, role).num_actors
            if rollouts % (t.mini_batches * ranks):
                raise ValueError(
                    f"train.prompts_per_step x rollout.n_samples = {rollouts} rollouts per step must divide evenly "
                    f"into train.mini_batches ({t.mini_batches}) x resources.{role}.num_actors ({ranks}); every "
                    f"{role} rank takes the same number of micro-batches per optimiser step"
                )
        if self.rollout.engine == "hf" and self.resources.rollout.num_actors > t.prompts_per_step:
            raise ValueError(
                f"resources.rollout.num_actors ({self.resources.rollout.num_actors}) exceeds "
                f"train.prompts_per_step ({t.prompts_per_step}): each rollout actor takes whole prompts"
            )


# --------------------------------------------------------------------------------------------- loading
def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key; accepted here: {', '.join(_accepted_keys(e['loc']))}")
            continue
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {key}: {e['msg']}{got_s}")
    return "\n".join(lines)


def _accepted_keys(loc: tuple) -> list[str]:
    """Field names of the section that holds `loc` (for 'unknown key' messages)."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            break
        model = ann
    return list(model.model_fields)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"override {dotted!r}: empty key segment; expected a.b.c=value")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=c` → ("a.b", yaml value of c)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected key=value, e.g. rollout.n_samples=8")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from exc
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or the defaults when path is None), apply `a.b=c` overrides, validate."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {p}: top level must be a mapping of sections, got {type(loaded).__name__}"
            )
        tree = loaded
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
    if overrides:
        source += " with --set " + " ".join(overrides)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def run_paths(cfg: Config) -> list[tuple[str, str]]:
    """(dotted key, path) of every file or directory a run reads or writes, as the config gives them: the models,
    the question files, the run directory, and what the proxy started from search.proxy reads (only the keys in
    use: ref/critic paths when set, the proxy's files when search.url is null, the world when a `world:` entry
    is read)."""
    paths = [("model.path", cfg.model.path)]
    for key in ("ref_path", "critic_path"):
        if getattr(cfg.model, key):
            paths.append((f"model.{key}", getattr(cfg.model, key)))
    for section in ("train", "eval"):
        paths += [(f"data.{section}[{i}]", f) for i, f in enumerate(getattr(cfg.data, section))]
    if any(f.startswith("world:") for f in cfg.data.train + cfg.data.eval):
        paths.append(("data.world.dir", cfg.data.world.dir))
    paths.append(("logging.run_dir", cfg.logging.run_dir))
    proxy = cfg.search.proxy
    if cfg.search.url is None:
        if proxy.corpus is not None:
            paths.append(("search.proxy.corpus", str(proxy.corpus)))
        paths.append(("search.proxy.cache.dir", str(proxy.cache.dir)))
        if proxy.dense.model is not None:
            paths.append(("search.proxy.dense.model", proxy.dense.model))
    return [(key, path) for key, path in paths if not path.startswith("world:")]


def resolve_run_paths(cfg: Config, *, cluster: bool, base: str | Path | None = None) -> Config:
    """The config with every path of `run_paths` absolute, resolved against `base` (default: the current
    directory), so that every actor reads the same files whatever its working directory.

    `cluster` (the driver joins a Ray cluster: `ray job submit`, resources.ray_address): a relative path is a
    ConfigError naming each key. The job then runs in Ray's per-job copy of the working directory, which does
    not hold .cache/ or runs/, and actors on other nodes resolve paths on their own disks: checkpoints of the
    ranks on other nodes would land on those machines. Paths must be absolute, on storage every node shares.
    """
    relative = [(key, path) for key, path in run_paths(cfg) if not Path(path).expanduser().is_absolute()]
    if cluster and relative:
        listed = ", ".join(f"{key}={path!r}" for key, path in relative)
        raise ConfigError(
            f"relative paths while joining a Ray cluster: {listed}. The job runs in Ray's per-job copy of the "
            "working directory and each node resolves a path on its own disk: give absolute paths on storage "
            "every node shares (--set KEY=/shared/...), logging.run_dir above all (every rank checkpoints there)"
        )
    root = Path(base) if base is not None else Path.cwd()
    tree = cfg.model_dump(mode="json")
    for key, path in run_paths(cfg):
        absolute = str((root / Path(path).expanduser()).resolve())
        *parents, last = key.replace("]", "").replace("[", ".").split(".")
        node: Any = tree
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = absolute
        else:
            node[last] = absolute
    return Config.model_validate(tree)


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (what a run directory stores)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def describe_schema(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """One line per field: dotted key, type, default, help."""
    lines: list[str] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines.append(f"{key}:  # {field.description}")
            lines += describe_schema(ann, key + ".")
            continue
        default = field.get_default(call_default_factory=True)
        type_s = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        lines.append(f"{key} = {default!r}  [{type_s}]  {field.description}")
    return lines


def add_config_arguments(parser: argparse.ArgumentParser, *, required: bool = False, what: str = "") -> None:
    """`-c/--config FILE` and repeatable `--set KEY=VALUE` (read them back with `load_config(args.config,
    args.overrides)`): the same two options on every command that takes a config."""
    parser.add_argument(
        "-c",
        "--config",
        required=required,
        help=f"YAML config file (see configs/){'; ' + what if what else ''}"
        + ("" if required else "; the defaults when omitted"),
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, the value parsed as YAML (e.g. --set rollout.n_samples=8); repeatable",
    )


def main(argv: list[str] | None = None) -> int:
    """`igpo config`: print the resolved config, or the schema with every field's help."""
    ap = argparse.ArgumentParser(prog="igpo config", description=main.__doc__)
    add_config_arguments(ap)
    ap.add_argument("--schema", action="store_true", help="list every field with its default and help")
    args = ap.parse_args(argv)
    if args.schema:
        print("\n".join(describe_schema()))
        return 0
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(dump_config(cfg), end="")
    return 0

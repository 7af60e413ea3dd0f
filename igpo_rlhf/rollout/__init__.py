"""Multi-turn agent rollouts: protocols, the agent loop, generator engines.

- `protocols`: `search_r1` / `tool_call` prompt rendering, turn parsing (`Action`), observations.
- `trajectory`: `PromptItem` (a question to roll out) and `Trajectory` (token ids + spans + belief points).
- `engine`: `Generation` and `HFEngine` (transformers generate, CPU/GPU).
- `vllm_engine`: the vLLM engine actors (GPU only; imports vllm lazily, not re-exported here).
- `agent_loop`: `run_rollouts(engine, tokenizer, protocol, search_client, prompts, ...)`.
"""

from igpo_rlhf.rollout.agent_loop import run_rollouts
from igpo_rlhf.rollout.engine import Generation, HFEngine
from igpo_rlhf.rollout.protocols import Action, SearchR1Protocol, ToolCallProtocol, make_protocol
from igpo_rlhf.rollout.trajectory import PromptItem, Trajectory

__all__ = [
    "Action",
    "Generation",
    "HFEngine",
    "PromptItem",
    "SearchR1Protocol",
    "ToolCallProtocol",
    "Trajectory",
    "make_protocol",
    "run_rollouts",
]

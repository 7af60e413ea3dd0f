"""The built-in demo world and the tiny-model kit: everything the CPU demo needs that is not the framework.

- `world`: the seeded fictional knowledge base, its passage corpus and 1-3 hop questions
  (`igpo build-world`); `demos`: demonstration trajectories over it.
- `tiny_model`: `igpo make-tiny-model`, the warm-started small Qwen2 agent; `model_check`: how it
  behaves (searches, answers, F1, belief movement) through the real proxy and rollout loop.

Nothing is imported here: `igpo build-world` needs only `world` and starts without torch.
"""

"""Pure IGPO/GRPO/PPO math (torch and numpy only; imports nothing else of ours)."""

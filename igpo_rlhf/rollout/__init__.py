"""Multi-turn agent rollouts: protocols, the agent loop, generator engines."""

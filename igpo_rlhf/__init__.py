"""igpo-rlhf: Information Gain-based Policy Optimization for multi-turn LLM search agents."""

__version__ = "0.1.0"

"""Supervised warm start on demonstration trajectories (loss on the generated turns only).

`loop.py` is the one training loop (the tiny demo model's warm start and `igpo sft` both use it),
`demos.py` builds demonstrations from real QA data and the shipped corpus, `check.py` measures how well a
model follows the search protocol on held-out questions, `cli.py` is `igpo sft`.
"""

"""Evaluation: the training agent loop over held-out questions, scored per source (`igpo eval`).

Three steps, each callable on its own (the trainer validates with the same code on trajectories its rollout
actors produced):

    from igpo_rlhf.eval import eval_sampling, score_rows, aggregate
    trajs = rollout_actor.generate(prompts, step, sampling=eval_sampling(cfg.eval))   # (a) generate
    rows = score_rows(trajs)                                                          # (b) score each rollout
    scores = aggregate(rows); scores.metrics("eval")                                  # (c) per source + avg

- `questions`: `load_eval_questions` (questions grouped by source) and `validation_subset` (the fixed subset).
- `scores`: `EvalRow`, `score_row(s)`, `aggregate` → `EvalScores`, `table_markdown` (the paper's layout).
- `setting`: what is recorded beside the scores (model hash, engine, protocol, prompt, search, commit, ...).
- `run`: `generate_trajectories`, `belief_scores`, `run_eval` and the `igpo eval` command (imports torch
  lazily; not re-exported here).
"""

from igpo_rlhf.eval.questions import load_eval_questions, validation_subset
from igpo_rlhf.eval.scores import (
    EvalRow,
    EvalScores,
    SourceScores,
    aggregate,
    score_row,
    score_rows,
    source_of,
    table_markdown,
)

__all__ = [
    "EvalRow",
    "EvalScores",
    "SourceScores",
    "aggregate",
    "load_eval_questions",
    "score_row",
    "score_rows",
    "source_of",
    "table_markdown",
    "validation_subset",
]

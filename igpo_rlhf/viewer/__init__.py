"""Looking at runs: `igpo view` (a local, read-only web app over a run or eval directory) and `igpo plot`
(static matplotlib figures of one or several runs).

- rollouts:   rollouts files indexed lazily (offsets + a summary per row), bad lines reported as problems
- metrics:    metrics.jsonl as aligned series
- directory:  the viewed run / eval directory (config, scores, files, tokenizer)
- credit:     r_t, r̃_t, Â_t of a group recomputed with igpo_rlhf.algo (IGPO and GRPO), checked against the rows
- listing:    filter / sort / page the trajectory list
- trajectory: the trajectory, group and token pages' data
- app:        the FastAPI app and `igpo view`; static/ holds its HTML, CSS and JS
- plot:       `igpo plot` and `plot_runs`
"""

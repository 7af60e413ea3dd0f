"""Expected values for the viewer tests, computed the slow obvious way from the formulas (DESIGN.md), never
with igpo_rlhf.algo: the viewer's recomputation is checked against these."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

EPS = 1e-6


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def snapshot(directory: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `directory` (to prove the viewer wrote nothing)."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def slow_credit(beliefs, outcomes, *, kind="prob_diff", norm="joint", gamma=1.0, ig_coef=1.0):
    """IGPO and GRPO written out: r_t = b_t - b_{t-1} (or log b), outcome last; r̃ = (r - mean)/(std + ε)
    with the population std over the pool (an all-equal pool gives 0), IG terms times ig_coef;
    Â_t = Σ_k γ^(k-t) r̃_k."""

    def normalize(values):
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        return [0.0 if max(values) == min(values) else (v - mean) / (std + EPS) for v in values]

    rewards = []
    for b, o in zip(beliefs, outcomes, strict=True):
        f = (lambda x: x) if kind == "log_prob_diff" else math.exp
        rewards.append([f(b[t]) - f(b[t - 1]) for t in range(1, len(b))] + [o])
    slots = [(i, t) for i, r in enumerate(rewards) for t in range(len(r))]
    if norm == "joint":
        pools = [slots]
    else:
        pools = [
            [s for s in slots if s[1] < len(rewards[s[0]]) - 1],
            [s for s in slots if s[1] == len(rewards[s[0]]) - 1],
        ]
    normed = [[0.0] * len(r) for r in rewards]
    for pool in pools:
        if pool:
            for (i, t), v in zip(pool, normalize([rewards[i][t] for i, t in pool]), strict=True):
                normed[i][t] = v if t == len(rewards[i]) - 1 else ig_coef * v
    adv = [[sum(gamma ** (k - t) * n[k] for k in range(t, len(n))) for t in range(len(n))] for n in normed]
    grpo = normalize(outcomes)
    return rewards, normed, adv, [[g] * len(b) for g, b in zip(grpo, beliefs, strict=True)]


def run_outcome(row: dict, penalty: float = -2.0) -> float:
    """r_{i,T_i} of a row with the default outcome metric: its F1, or the format penalty without an answer."""
    return penalty if row["answer"] is None else row["f1"]


def group_expectations(rows: list[dict], outcome=run_outcome) -> dict[tuple, dict[str, list]]:
    """For every row of a step file: its group's IGPO rewards / r̃ / Â and GRPO Â, keyed by (group, sample)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r.get("chunk"), r["group_id"]), []).append(r)
    out = {}
    for key, members in groups.items():
        rewards, normed, adv, grpo = slow_credit(
            [m["beliefs"] for m in members], [outcome(m) for m in members]
        )
        for k, m in enumerate(members):
            out[(key, m["sample_id"])] = {
                "rewards": rewards[k],
                "normalized": normed[k],
                "igpo": adv[k],
                "grpo": grpo[k],
            }
    return out

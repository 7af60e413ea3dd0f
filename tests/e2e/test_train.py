"""End to end through the real pieces: local Ray actors (rollout, belief scorer, reference, DeepSpeed policy
with gloo, DeepSpeed critic), the real search proxy on loopback, a tiny warm-started Qwen2.

Each estimator trains two steps; the tests then read what the run left (metrics.jsonl, TensorBoard,
rollouts, checkpoints) and query the still-running actors. Expected rewards and advantages are recomputed
here from the saved beliefs and answers with the formulas written out (DESIGN.md); step 1's beliefs are
recomputed by plain forwards of the initial model, PPO's step-1 advantages by GAE by hand, the logged
metrics by recounting the rollouts; the sampled tokens are re-generated in this process with the same
weights and seed.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import string
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from igpo_rlhf.config import dump_config, load_config
from igpo_rlhf.data.datasets import load_questions
from igpo_rlhf.models.loading import load_tokenizer
from igpo_rlhf.ray.trainer import Trainer
from igpo_rlhf.rollout.agent_loop import call_seed, run_rollouts
from igpo_rlhf.rollout.engine import HFEngine
from igpo_rlhf.rollout.protocols import make_protocol
from igpo_rlhf.rollout.searcher import ProxySearcher
from igpo_rlhf.rollout.trajectory import PromptItem
from services.search_proxy.launch import start_proxy
from tests.e2e.conftest import ROOT, e2e_config
from tests.scoring.naive import naive_belief

pytestmark = pytest.mark.slow
EPS = 1e-6


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def prompts_of(cfg):
    return load_questions(cfg.data.train, world=cfg.data.world)


def start_run(cfg, url, **kwargs) -> tuple[Trainer, list[dict]]:
    trainer = Trainer(cfg, prompts_of(cfg), url, **kwargs)
    return trainer, trainer.run()


def expected_turn_advantages(rows: list[dict], norm_pool_of) -> list[list[float]]:
    """Slow obvious Â_{i,t}: per group, pool the turn rewards, r̃ = (r - mean)/(std + ε) (population
    std; an all-equal pool gives 0), then Â_t = Σ_{k >= t} r̃_k (γ = 1)."""
    groups = defaultdict(list)
    for i, row in enumerate(rows):
        groups[row["group_id"]].append(i)
    normed = [[0.0] * len(row["turn_rewards"]) for row in rows]
    for members in groups.values():
        for pool in norm_pool_of(rows, members):
            values = [rows[i]["turn_rewards"][t] for i, t in pool]
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
            for (i, t), v in zip(pool, values, strict=True):
                normed[i][t] = 0.0 if max(values) == min(values) else (v - mean) / (std + EPS)
    return [[sum(r[t:]) for t in range(len(r))] for r in normed]


def joint_pools(rows, members):
    return [[(i, t) for i in members for t in range(len(rows[i]["turn_rewards"]))]]


def squad_normalise(text: str) -> str:
    """SQuAD's answer normalisation: lower case, punctuation dropped, articles a/an/the dropped, one space."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def squad_f1(answer: str, golds: list[str]) -> float:
    """SQuAD token F1 of `answer` against the best gold alias, written out here (not the production scorer):
    overlap = the multiset intersection of normalised tokens, P = overlap/|answer|, R = overlap/|gold|."""
    best = 0.0
    for gold in golds:
        a, g = squad_normalise(answer).split(), squad_normalise(gold).split()
        overlap = sum(min(a.count(w), g.count(w)) for w in set(a))
        if overlap:
            p, r = overlap / len(a), overlap / len(g)
            best = max(best, 2 * p * r / (p + r))
    return best


def test_the_independent_f1_on_hand_worked_cases():
    assert squad_f1("Paris", ["paris"]) == 1.0
    assert squad_f1("the city of Paris", ["Paris"]) == pytest.approx(
        2 * (1 / 3) * 1 / (1 / 3 + 1)
    )  # P 1/3, R 1
    assert squad_f1("Rome", ["Paris", "City of Light"]) == 0.0
    assert squad_f1("light city", ["City of Light"]) == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))


def written_answer(row: dict) -> str | None:
    """The text inside the last <answer>...</answer> of the last turn, None unless the rollout answered."""
    if row["finish_reason"] != "answer":
        return None
    return re.findall(r"<answer>(.*?)</answer>", row["turn_texts"][-1], flags=re.S)[-1].strip()


def assert_rollout_metrics(m: dict, rows: list[dict]) -> None:
    """The step's reward and rollout metrics, recounted here per trajectory from its rollouts file."""
    n = len(rows)
    assert m["rollout/trajectories"] == n
    turns, searches, action_tokens, obs_tokens, answers = [], [], [], [], []
    for r in rows:
        turns.append(len(r["turn_spans"]))
        assert len(r["actions"]) == turns[-1]
        # a search whose results were appended is a turn followed by an observation
        searched = [t for t in range(turns[-1] - 1) if "<search>" in r["turn_texts"][t]]
        assert searched == list(range(len(r["obs_spans"])))
        assert all(r["actions"][t]["kind"] == "search" for t in searched)
        searches.append(len(searched))
        assert r["n_searches"] == searches[-1]
        action_tokens.append(sum(b - a for a, b in r["turn_spans"]))
        obs_tokens.append(len(r["token_ids"]) - r["prompt_len"] - action_tokens[-1])  # what is neither
        answers.append(written_answer(r))
        assert r["answer"] == answers[-1]
    em = [
        0.0 if a is None else float(any(squad_normalise(a) == squad_normalise(g) for g in r["golds"]))
        for a, r in zip(answers, rows, strict=True)
    ]
    f1 = [0.0 if a is None else squad_f1(a, r["golds"]) for a, r in zip(answers, rows, strict=True)]
    want = {
        "rollout/turns": sum(turns) / n,
        "rollout/searches": sum(searches) / n,
        "rollout/searched_frac": sum(s > 0 for s in searches) / n,
        "rollout/response_tokens": sum(action_tokens) / n,
        "rollout/observation_tokens": sum(obs_tokens) / n,
        "rollout/total_tokens": sum(len(r["token_ids"]) for r in rows) / n,
        "reward/format_fail": sum(a is None for a in answers) / n,
        "reward/em": sum(em) / n,
        "reward/f1": sum(f1) / n,
        "reward/outcome": sum(-2.0 if a is None else f for a, f in zip(answers, f1, strict=True)) / n,
    }
    for reason in ("answer", "invalid", "max_turns", "max_length", "eos"):
        want[f"rollout/finish_{reason}"] = sum(r["finish_reason"] == reason for r in rows) / n
    assert {k: m[k] for k in want} == pytest.approx(want, abs=1e-9)


# ------------------------------------------------------------------------------------------- IGPO
@pytest.fixture(scope="module")
def igpo(tiny, proxy, local_ray, tmp_path_factory):
    cfg = e2e_config(tiny, tmp_path_factory.mktemp("igpo"))
    trainer, history = start_run(cfg, proxy.url)
    yield cfg, trainer, history
    trainer.close()


def test_igpo_two_steps_leave_metrics_rollouts_and_checkpoints(igpo):
    cfg, _, history = igpo
    run = Path(cfg.logging.run_dir)
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        for key in ("reward/outcome", "reward/f1", "reward/em", "reward/format_fail", "ig/mean", "ig/std",
                    "ig/positive_frac", "adv/mean", "adv/std", "policy/kl", "policy/entropy", "policy/clip_frac",
                    "rollout/response_tokens", "rollout/observation_tokens", "rollout/turns", "rollout/searches",
                    "time/rollout", "time/search", "time/scoring", "time/reference", "time/update", "time/sync",
                    "time/checkpoint"):  # fmt: skip
            assert key in m, key
        assert m["rollout/trajectories"] == 8  # 2 prompts x n = 4
        assert_rollout_metrics(m, read_jsonl(run / "rollouts" / f"step_{m['step']:05d}.jsonl"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00001", "step_00002"]
    assert (run / "checkpoints" / "step_00002" / "policy" / "ds").is_dir()
    assert {p.name for p in (run / "rollouts").iterdir()} == {"step_00001.jsonl", "step_00002.jsonl"}

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = events.Scalars("reward/outcome")
    assert [e.step for e in scalars] == [1, 2]
    assert [e.value for e in scalars] == pytest.approx([m["reward/outcome"] for m in metrics])


def test_igpo_rewards_and_advantages_match_the_formulas(igpo):
    cfg, _, history = igpo
    run = Path(cfg.logging.run_dir)
    n_ig = 0
    for step, m in zip((1, 2), history, strict=True):
        rows = read_jsonl(run / "rollouts" / f"step_{step:05d}.jsonl")
        for row in rows:
            T = len(row["turn_spans"])
            assert len(row["beliefs"]) == len(row["belief_points"]) == T  # T turns, T beliefs
            b = [math.exp(x) for x in row["beliefs"]]
            outcome = -2.0 if row["answer"] is None else squad_f1(row["answer"], row["golds"])
            assert row["turn_rewards"] == pytest.approx([b[t] - b[t - 1] for t in range(1, T)] + [outcome])
            n_ig += T - 1
        want = expected_turn_advantages(rows, joint_pools)
        for row, adv in zip(rows, want, strict=True):
            assert row["turn_advantages"] == pytest.approx(adv, abs=1e-6)
        ig = [r for row in rows for r in row["turn_rewards"][:-1]]
        if ig:
            assert m["ig/mean"] == pytest.approx(sum(ig) / len(ig))
        assert m["reward/outcome"] == pytest.approx(sum(r["outcome_reward"] for r in rows) / len(rows))
    assert n_ig > 0, "no rollout searched: the IG path was not exercised"


def test_step_1_beliefs_are_the_initial_models_answer_log_probs(igpo, tiny):
    """The beliefs the rewards above are built from: step 1 was scored with the initial weights, so each
    log b_{i,t} is, by one plain forward of the initial model over c_{i,t} + probe + alias, the mean
    log-prob of the alias's tokens, best alias (DESIGN.md "Belief"). The probe and alias ids are spelled
    out here as the policy writes an answer: `<answer>` (one added token), then " " + alias."""
    cfg, _, _ = igpo
    _, model_dir = tiny
    assert (cfg.algorithm.answer_probe, cfg.algorithm.alias_reduce) == ("<answer>", "max")
    rows = read_jsonl(Path(cfg.logging.run_dir) / "rollouts" / "step_00001.jsonl")
    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    probe = [tokenizer.convert_tokens_to_ids("<answer>")]
    assert probe != [tokenizer.unk_token_id]
    n_aliases = 0
    for row in rows:
        # c_{i,0} is the prompt, c_{i,t} ends with observation t
        assert row["belief_points"] == [row["prompt_len"]] + [end for _, end in row["obs_spans"]]
        assert row["prompt_len"] == row["turn_spans"][0][0]
        aliases = []
        for gold in row["golds"]:
            written = tokenizer.encode(f"<answer> {gold}", add_special_tokens=False)
            assert written[:1] == probe and len(written) > 1
            aliases.append(written[1:])
        n_aliases = max(n_aliases, len({tuple(a) for a in aliases}))
        want = [
            max(naive_belief(model, row["token_ids"], p, probe, alias) for alias in aliases)
            for p in row["belief_points"]
        ]
        assert row["beliefs"] == pytest.approx(want, abs=1e-4, rel=0)
    assert n_aliases > 1, "no question with two gold aliases: the max over aliases was not exercised"
    assert any(len(row["belief_points"]) > 1 for row in rows), "no belief after an observation"


def test_malformed_outputs_get_the_format_penalty_and_still_train(igpo, tiny):
    """Every step held malformed trajectories; they are trained on (their action tokens are in the update,
    with a non-zero advantage), the loss stays finite, and the policy's weights moved."""
    cfg, trainer, history = igpo
    _, model_dir = tiny
    reasons = set()
    for step, m in zip((1, 2), history, strict=True):
        rows = read_jsonl(Path(cfg.logging.run_dir) / "rollouts" / f"step_{step:05d}.jsonl")
        bad = [r for r in rows if r["finish_reason"] in ("invalid", "eos", "max_turns", "max_length")]
        assert bad, f"the tiny model produced no malformed trajectory at step {step}"
        reasons |= {r["finish_reason"] for r in bad}
        for r in bad:
            assert r["answer"] is None and r["outcome_reward"] == -2.0 and r["turn_rewards"][-1] == -2.0
        assert any(a != 0.0 for r in bad for a in r["turn_advantages"])
        # the update covered every generated token of the step, the malformed rollouts' included
        assert m["policy/action_tokens"] == sum(b - a for r in rows for a, b in r["turn_spans"])
        assert math.isfinite(m["policy/loss"]) and math.isfinite(m["policy/grad_norm"])
        assert m["policy/grad_norm"] > 0
    assert "invalid" in reasons
    initial = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    trained = ray.get(trainer.policy.call_async("state_dict_for_sync")[0])
    assert any(not torch.equal(initial[k], trained[k]) for k in initial)


def test_rollouts_are_the_sampled_tokens(igpo, tiny, proxy):
    """Step 1 ran with the initial weights: re-running the agent loop here with those weights and the
    step's seed gives exactly the saved token ids and spans; the trained mask is the turns' tokens."""
    cfg, _, _ = igpo
    _, model_dir = tiny
    rows = read_jsonl(Path(cfg.logging.run_dir) / "rollouts" / "step_00001.jsonl")
    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    protocol = make_protocol(cfg.rollout, tokenizer, cfg.algorithm.answer_probe)
    # rows are ordered by (group, sample): rows 0-3 are prompt 0's group, rows 4-7 prompt 1's
    prompts = [PromptItem(rows[i]["question"], rows[i]["golds"]) for i in (0, 4)]
    r = cfg.rollout
    local = run_rollouts(
        HFEngine(model, tokenizer),
        tokenizer,
        protocol,
        ProxySearcher(proxy.url, timeout_s=30, retries=2),
        prompts,
        n_samples=r.n_samples,
        max_turns=r.max_turns,
        max_new_tokens=r.max_new_tokens,
        max_total_tokens=r.max_total_tokens,
        max_observation_tokens=r.max_observation_tokens,
        search_top_k=r.search_top_k,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=r.top_k,
        batch_size=r.batch_size,
        seed=call_seed(cfg.train.seed, 1, 0),  # one rollout actor: offset 0
        max_prompt_tokens=r.max_prompt_tokens,
    )
    assert [t.token_ids for t in local] == [row["token_ids"] for row in rows]
    assert [[list(s) for s in t.turn_spans] for t in local] == [row["turn_spans"] for row in rows]
    assert [[list(s) for s in t.obs_spans] for t in local] == [row["obs_spans"] for row in rows]
    for t, row in zip(local, rows, strict=True):
        mask = t.action_mask
        assert [j for j, m in enumerate(mask) if m] == [j for a, b in row["turn_spans"] for j in range(a, b)]
        assert row["turn_texts"] == [tokenizer.decode(row["token_ids"][a:b]) for a, b in row["turn_spans"]]


def test_policy_weights_change_and_reach_the_rollout_and_scorer_actors(igpo, tiny, proxy):
    cfg, trainer, _ = igpo
    _, model_dir = tiny
    initial = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    trained = ray.get(trainer.policy.call_async("state_dict_for_sync")[0])
    assert trained.keys() == initial.keys()
    changed = [k for k in initial if not torch.equal(initial[k], trained[k])]
    assert len(changed) > len(initial) // 2, changed

    assert trainer.scorer.call("weights_version") == [2]
    assert trainer.rollouts.weights_versions() == [2]

    # the scorer's old log-probs are those of the trained weights, computed here independently
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.load_state_dict(trained)
    seq = read_jsonl(Path(cfg.logging.run_dir) / "rollouts" / "step_00002.jsonl")[0]["token_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits[0]  # [L, V]
    want = (
        torch.log_softmax(logits[:-1].double(), -1)
        .gather(-1, torch.tensor(seq[1:]).unsqueeze(-1))
        .squeeze(-1)
    )
    got = ray.get(
        trainer.scorer.actors[0].score.remote([seq], [[]], [1], None, action_masks=[[1] * len(seq)])
    )
    torch.testing.assert_close(got.token_log_probs[0][1:].double(), want, atol=1e-4, rtol=0)

    # the rollout actor samples from the trained weights: the same step seed gives the same tokens here
    tokenizer = load_tokenizer(model_dir)
    protocol = make_protocol(cfg.rollout, tokenizer, cfg.algorithm.answer_probe)
    prompt = [PromptItem("Who founded the trust?", ["x"])]
    remote = trainer.rollouts.generate(prompt, 99)
    r = cfg.rollout
    local = run_rollouts(HFEngine(model, tokenizer), tokenizer, protocol, ProxySearcher(proxy.url, timeout_s=30, retries=2), prompt,
                         n_samples=r.n_samples, max_turns=r.max_turns, max_new_tokens=r.max_new_tokens,
                         max_total_tokens=r.max_total_tokens, max_observation_tokens=r.max_observation_tokens,
                         search_top_k=r.search_top_k, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                         batch_size=r.batch_size, seed=call_seed(cfg.train.seed, 99, 0),
                         max_prompt_tokens=r.max_prompt_tokens)  # fmt: skip
    assert [t.token_ids for t in remote] == [t.token_ids for t in local]


# ------------------------------------------------------------------------------------- resume
def test_killed_run_resumes_step_for_step(igpo, tiny, proxy, local_ray, tmp_path):
    """A run SIGKILLed during step 2 (after its step-1 checkpoint) and resumed with --resume produces the
    same step 2 as the uninterrupted IGPO run: same prompts, same sampled tokens, same metrics. The IGPO run's
    actors stay up (other tests query them, in any order); the cluster holds them and one more run's."""
    cfg_full, _, history = igpo
    run_dir = tmp_path / "killed"
    sets = [f"logging.run_dir={run_dir}", f"search.url={proxy.url}", f"resources.ray_address={local_ray}"]
    cfg = e2e_config(tiny, run_dir, *sets)
    config_file = tmp_path / "run.yaml"
    config_file.write_text(dump_config(cfg), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "igpo_rlhf.cli", "train", "-c", str(config_file)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().count("\n") >= 1:  # step 1 checkpointed and logged
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-3000:]
    assert [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step_")] == [
        "step_00001"
    ]

    resumed = Trainer(cfg, prompts_of(cfg), proxy.url, resume=True)
    try:
        resumed_history = resumed.run()
    finally:
        resumed.close()
    assert [m["step"] for m in read_jsonl(metrics)] == [1, 2]
    full_rows = read_jsonl(Path(cfg_full.logging.run_dir) / "rollouts" / "step_00002.jsonl")
    rows = read_jsonl(run_dir / "rollouts" / "step_00002.jsonl")
    assert [r["question"] for r in rows] == [r["question"] for r in full_rows]  # same data order
    assert [r["token_ids"] for r in rows] == [r["token_ids"] for r in full_rows]  # same sampled tokens
    flat = [a for r in rows for a in r["turn_advantages"]]
    assert flat == pytest.approx([a for r in full_rows for a in r["turn_advantages"]], abs=1e-6)
    [m2] = resumed_history
    for key, value in history[1].items():
        if not key.startswith("time/"):
            assert m2[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


# -------------------------------------------------------------------------------------- GRPO, PPO
def test_grpo_two_steps_and_a_proxy_that_dies_between_them(tiny, local_ray, tmp_path):
    """GRPO for two steps against its own proxy, which is killed after step 1: step 2's searches get error
    observations and, with the search guard switched off (search.failures rates 1), the step still trains
    (tests/e2e/test_failures.py: with the default guard it is not trained on). Advantages are the
    group-normalised outcome on every turn. Policy and scorer run colocated (resources.colocate)."""
    world_dir, _ = tiny
    # colocated: policy and scorer share one placement group (bundle 0 holds both)
    cfg = e2e_config(tiny, tmp_path / "grpo", "algorithm.estimator=grpo", "algorithm.kl_coef=0",
                     "search.retries=0", "resources.colocate=true", "search.failures.max_error_rate=1",
                     "search.failures.max_window_error_rate=1")  # fmt: skip
    settings = load_config(None, [f"search.proxy.corpus={world_dir / 'corpus.jsonl'}", 'search.proxy.cache.mode="off"',
                                  f"search.proxy.cache.dir={tmp_path / 'cache'}"]).search.proxy  # fmt: skip
    own_proxy = start_proxy(settings, port=0)
    trainer = Trainer(cfg, prompts_of(cfg), own_proxy.url)
    try:
        assert trainer.reference is None  # kl_coef = 0: no reference actor at all
        assert trainer.placements["policy"].group.id == trainer.placements["scorer"].group.id
        assert trainer.placements["rollout"].group.id != trainer.placements["policy"].group.id
        history = [trainer.train_step(1)]
        own_proxy.stop()
        history.append(trainer.train_step(2))
        assert trainer.scorer.call("weights_version") == [2]
    finally:
        own_proxy.stop()
        trainer.close()
    assert [("ig/mean" in m, "policy/kl" in m) for m in history] == [(False, False)] * 2
    assert history[0]["rollout/search_errors"] == 0
    assert (
        history[1]["rollout/searches"] > 0
        and history[1]["rollout/search_errors"] == history[1]["rollout/searches"]
    )
    assert math.isfinite(history[1]["policy/loss"])
    rows = read_jsonl(tmp_path / "grpo" / "rollouts" / "step_00002.jsonl")
    errored = [r for r in rows if r["n_search_errors"] > 0]
    assert errored and all(r["n_search_errors"] == r["n_searches"] for r in rows)
    for step in (1, 2):
        rows = read_jsonl(tmp_path / "grpo" / "rollouts" / f"step_{step:05d}.jsonl")
        assert all(r["beliefs"] is None and len(r["turn_rewards"]) == 1 for r in rows)
        by_group = defaultdict(list)
        for r in rows:
            by_group[r["group_id"]].append(r["outcome_reward"])
        for r in rows:
            g = by_group[r["group_id"]]
            mean = sum(g) / len(g)
            std = math.sqrt(sum((x - mean) ** 2 for x in g) / len(g))
            a = 0.0 if max(g) == min(g) else (r["outcome_reward"] - mean) / (std + EPS)
            assert r["turn_advantages"] == pytest.approx([a] * len(r["turn_spans"]), abs=1e-6)


def test_ppo_two_steps_train_the_critic(tiny, proxy, local_ray, tmp_path):
    """PPO = GAE over the action tokens with a critic (DESIGN.md). The critic's value head is a zero-initialised
    linear layer without bias, so at step 1 every value is exactly 0 and GAE (γ = 1, λ = 0.95, the outcome r
    as the reward of the last action token, observation tokens skipped) is by hand A_k = (γλ)^(K-1-k) · r on
    the k-th of a rollout's K action tokens; the critic's step-1 loss is then ½ A² averaged over them."""
    cfg = e2e_config(tiny, tmp_path / "ppo", "algorithm.estimator=ppo")
    trainer = Trainer(cfg, prompts_of(cfg), proxy.url)
    try:
        history = trainer.run()
        seq = read_jsonl(tmp_path / "ppo" / "rollouts" / "step_00002.jsonl")[0]["token_ids"]
        [values] = ray.get(trainer.critic.actors[0].values.remote([seq]))
    finally:
        trainer.close()
    assert values.shape == (len(seq),) and values[0] == 0.0
    assert values[1:].abs().max() > 0  # the fresh value head outputs exactly 0; two updates moved it
    for step, m in zip((1, 2), history, strict=True):
        assert {"critic/value_loss", "critic/grad_norm", "policy/kl"} <= m.keys()
        assert_rollout_metrics(m, read_jsonl(tmp_path / "ppo" / "rollouts" / f"step_{step:05d}.jsonl"))
    assert (tmp_path / "ppo" / "checkpoints" / "step_00002" / "critic" / "ds").is_dir()

    gamma, lam = cfg.algorithm.gae_gamma, cfg.algorithm.gae_lambda
    assert (gamma, lam) == (1.0, 0.95)
    m = history[0]
    assert m["critic/value_mean"] == 0.0  # the values the critic's step-1 update started from
    token_advs = []
    for r in read_jsonl(tmp_path / "ppo" / "rollouts" / "step_00001.jsonl"):
        answer = written_answer(r)
        reward = -2.0 if answer is None else squad_f1(answer, r["golds"])
        assert r["outcome_reward"] == reward and r["turn_rewards"] == [reward]
        K = sum(b - a for a, b in r["turn_spans"])
        adv = [(gamma * lam) ** (K - 1 - k) * reward for k in range(K)]  # action tokens in order
        per_turn, k = [], 0
        for a, b in r["turn_spans"]:  # the rollouts file keeps each turn's mean token advantage
            per_turn.append(sum(adv[k : k + b - a]) / (b - a))
            k += b - a
        assert r["turn_advantages"] == pytest.approx(per_turn, rel=1e-5, abs=1e-6)
        token_advs += adv
    n = len(token_advs)
    mean = sum(token_advs) / n
    assert m["adv/mean"] == pytest.approx(mean, rel=1e-5)
    assert m["adv/std"] == pytest.approx(math.sqrt(sum((a - mean) ** 2 for a in token_advs) / n), rel=1e-5)
    assert (m["adv/min"], m["adv/max"]) == pytest.approx((min(token_advs), max(token_advs)), rel=1e-5)
    assert m["critic/value_loss"] == pytest.approx(sum(0.5 * a * a for a in token_advs) / n, rel=1e-5)

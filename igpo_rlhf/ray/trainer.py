"""The single controller: one loop per training step, driving every role's actors.

    step: sample prompts → n rollouts each (rollout actors / vLLM engines)
          → beliefs log b_{i,t} + old log-probs (belief scorer, one pass)  ┐ concurrently
          → ref log-probs (reference, when kl_coef > 0)                    │
          → values V(s_j) (critic, estimator=ppo)                          ┘
          → rewards (outcome F1 / format penalty; IG r_{i,t} from beliefs)
          → advantages (igpo | grpo | ppo) → policy (and critic) update
          → weights pushed to rollout and scorer actors → metrics, rollouts JSONL, checkpoint

The math lives in igpo_rlhf.algo (wired by experience.py); this module moves data between actors,
times each phase and keeps the run resumable.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from igpo_rlhf.config import Config, ConfigError, dump_config
from igpo_rlhf.ray.critic import CriticActor
from igpo_rlhf.ray.generators import HFRollouts, VLLMRollouts
from igpo_rlhf.ray.group import ActorGroup
from igpo_rlhf.ray.placement import RolePlacement, place_roles, release
from igpo_rlhf.ray.policy import PolicyActor
from igpo_rlhf.ray.reference import ReferenceActor
from igpo_rlhf.rollout.trajectory import PromptItem, Trajectory
from igpo_rlhf.scoring.probe import alias_token_ids, probe_token_ids
from igpo_rlhf.training.batch import Experience, grad_accum_steps, per_rank_minibatch_size, split_for_update
from igpo_rlhf.training.checkpoint import (
    CheckpointManager,
    capture_rng,
    load_trainer_state,
    restore_rng,
    save_trainer_state,
)
from igpo_rlhf.training.experience import (
    ppo_advantages,
    score_outcomes,
    token_advantage_rows,
    turn_level_advantages,
    turn_rewards,
)
from igpo_rlhf.training.logprobs import length_batches
from igpo_rlhf.training.metrics import MetricsLogger


def check_run_config(cfg: Config) -> None:
    """Constraints that span sections and only matter for training; ConfigError naming the keys."""
    rollouts = cfg.train.prompts_per_step * cfg.rollout.n_samples
    for role in ("policy", "critic"):
        if role == "critic" and cfg.algorithm.estimator != "ppo":
            continue
        try:
            per_rank_minibatch_size(rollouts, cfg.train.mini_batches, getattr(cfg.resources, role).num_actors)
        except ValueError as err:
            raise ConfigError(str(err).replace("resources.policy.", f"resources.{role}.")) from None
    if cfg.rollout.engine == "hf" and cfg.resources.rollout.num_actors > cfg.train.prompts_per_step:
        raise ConfigError(
            f"resources.rollout.num_actors ({cfg.resources.rollout.num_actors}) exceeds train.prompts_per_step "
            f"({cfg.train.prompts_per_step}): each rollout actor takes whole prompts"
        )


class Trainer:
    """Builds the actors of a run and trains; `run()` does every step, `close()` frees the actors."""

    def __init__(
        self, cfg: Config, prompts: list[PromptItem], search_url: str, *, resume: bool = False
    ) -> None:
        from igpo_rlhf.data.datasets import PromptSampler
        from igpo_rlhf.ray.rollout_actor import load_tokenizer
        from igpo_rlhf.rollout.protocols import make_protocol

        check_run_config(cfg)
        self.cfg = cfg
        self.run_dir = Path(cfg.logging.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.estimator = cfg.algorithm.estimator
        self.tokenizer = load_tokenizer(cfg.model.path)
        self.protocol = make_protocol(cfg.rollout, self.tokenizer, cfg.algorithm.answer_probe)
        self.probe_ids = probe_token_ids(self.tokenizer, self.protocol.answer_probe_text)
        self._alias_cache: dict[tuple[str, ...], list[list[int]]] = {}
        self.sampler = PromptSampler(prompts, cfg.train.prompts_per_step, cfg.train.seed, cfg.data.shuffle)
        self.checkpoints = CheckpointManager(self.run_dir, cfg.checkpoint.keep_last)
        self.step = 0
        if not resume and self.checkpoints.latest() is not None:
            raise ConfigError(
                f"{self.checkpoints.root} already holds checkpoints; pass --resume to continue that run, or "
                "choose another logging.run_dir"
            )
        self.placements: dict[str, RolePlacement] = {}
        self.policy: ActorGroup | None = None
        self.critic: ActorGroup | None = None
        self.scorer: ActorGroup | None = None
        self.reference: ActorGroup | None = None
        self.rollouts: HFRollouts | VLLMRollouts | None = None
        try:
            self._build_actors(search_url)
            if resume:
                self._resume()
        except BaseException:
            self.close()
            raise
        (self.run_dir / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")

    # --------------------------------------------------------------------------------------- set-up
    def _build_actors(self, search_url: str) -> None:
        cfg = self.cfg
        self.use_reference = cfg.algorithm.kl_coef > 0
        roles = ["policy", "scorer"]
        if cfg.rollout.engine == "hf":
            roles.insert(0, "rollout")
        if self.use_reference:
            roles.append("reference")
        if self.estimator == "ppo":
            roles.append("critic")
        self.placements = placements = place_roles(cfg.resources, roles)

        rollouts = cfg.train.prompts_per_step * cfg.rollout.n_samples
        total_steps = cfg.train.steps * cfg.train.ppo_epochs * cfg.train.mini_batches
        self.policy = ActorGroup(PolicyActor, placements["policy"], distributed=True)
        pending = self.policy.call_async(
            "init_model",
            cfg,
            grad_accum=self._grad_accum(rollouts, len(self.policy)),
            total_optimizer_steps=total_steps,
        )
        if self.estimator == "ppo":
            self.critic = ActorGroup(CriticActor, placements["critic"], distributed=True)
            pending += self.critic.call_async(
                "init_model",
                cfg,
                grad_accum=self._grad_accum(rollouts, len(self.critic)),
                total_optimizer_steps=total_steps,
            )
        from igpo_rlhf.ray.scorer import BeliefScorerActor

        scorer_place = placements["scorer"]
        self.scorer = ActorGroup(
            BeliefScorerActor,
            scorer_place,
            init_args=(cfg.model.path,),
            init_kwargs={
                "dtype": cfg.model.dtype,
                "device": "cuda" if scorer_place.num_gpus > 0 else "cpu",
                "token_budget": cfg.scorer.token_budget,
            },
        )
        pending += self.scorer.call_async("weights_version")
        if self.use_reference:
            self.reference = ActorGroup(ReferenceActor, placements["reference"], init_args=(cfg,))
            pending += self.reference.call_async("ready")
        if cfg.rollout.engine == "hf":
            self.rollouts = HFRollouts(cfg, placements["rollout"], search_url)
        else:
            self.rollouts = VLLMRollouts(cfg, search_url, self.tokenizer, self.protocol)
        pending += self.rollouts.ready()
        ray.get(pending)

    def _grad_accum(self, rollouts: int, world_size: int) -> int:
        per_rank = per_rank_minibatch_size(rollouts, self.cfg.train.mini_batches, world_size)
        return grad_accum_steps(per_rank, self.cfg.train.micro_batch_size)

    def _resume(self) -> None:
        latest = self.checkpoints.latest()
        if latest is None:
            print(f"--resume: no checkpoint in {self.checkpoints.root}; starting from step 0", flush=True)
            return
        step, directory = latest
        state = load_trainer_state(directory)
        if state["seed"] != self.cfg.train.seed:
            raise ConfigError(
                f"--resume: the checkpoint was trained with train.seed={state['seed']}, the config has "
                f"{self.cfg.train.seed}; the data order and sampling would differ"
            )
        refs = self.policy.call_async("load_checkpoint", str(directory / "policy"))
        if self.critic is not None:
            refs += self.critic.call_async("load_checkpoint", str(directory / "critic"))
        ray.get(refs)
        self.sampler.load_state_dict(state["sampler"])
        restore_rng(state["rng"])
        self.step = step
        self._sync_weights(version=step)
        print(f"resumed from {directory} (step {step})", flush=True)

    # ---------------------------------------------------------------------------------------- loop
    def run(self) -> list[dict[str, float]]:
        """Train from the current step to `train.steps`; returns the metrics of the steps run."""
        cfg = self.cfg
        logger = MetricsLogger(
            self.run_dir,
            cfg.logging,
            total_steps=cfg.train.steps,
            start_step=self.step,
            run_config=cfg.model_dump(mode="json"),
        )
        history = []
        try:
            while self.step < cfg.train.steps:
                step = self.step + 1
                metrics = self.train_step(step)
                self.step = step
                if step % cfg.checkpoint.every_n_steps == 0 or step == cfg.train.steps:
                    t0 = time.perf_counter()
                    self.save_checkpoint()
                    metrics["time/checkpoint"] = time.perf_counter() - t0
                logger.log(step, metrics)
                history.append(metrics)
        finally:
            logger.close()
        return history

    def train_step(self, step: int) -> dict[str, float]:
        """One step; returns its metrics (time/checkpoint is added by `run`)."""
        t_step = time.perf_counter()
        times: dict[str, float] = {}
        prompts = self.sampler.next_batch()

        t0 = time.perf_counter()
        trajectories = self.rollouts.generate(prompts, step)
        times["rollout"] = time.perf_counter() - t0
        for traj in trajectories:
            traj.validate()

        scored = self._score(trajectories, times)
        outcomes = score_outcomes(trajectories, self.cfg.algorithm)
        exps, per_turn, rewards = self._experiences(trajectories, scored, [o.reward for o in outcomes])

        t0 = time.perf_counter()
        update_stats = self._update(exps, step)
        times["update"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        self._sync_weights(version=step)
        times["sync"] = time.perf_counter() - t0

        if self.cfg.logging.save_rollouts:
            self._save_rollouts(step, trajectories, outcomes, scored, rewards, per_turn)
        metrics = step_metrics(trajectories, outcomes, scored.get("beliefs"), rewards, exps, self.estimator)
        metrics.update(update_stats)
        parallel = self.rollouts.parallelism
        metrics["time/generate"] = sum(t.generate_seconds for t in trajectories) / parallel
        metrics["time/search"] = sum(t.search_seconds for t in trajectories) / parallel
        metrics.update({f"time/{k}": v for k, v in times.items()})
        metrics["time/step"] = time.perf_counter() - t_step
        return metrics

    # ------------------------------------------------------------------------------------- phases
    def _answers(self, traj: Trajectory) -> list[list[int]]:
        key = tuple(traj.golds)
        if key not in self._alias_cache:
            self._alias_cache[key] = alias_token_ids(
                self.tokenizer, self.protocol.answer_probe_text, traj.golds
            )
        return self._alias_cache[key]

    def _score(self, trajectories: list[Trajectory], times: dict[str, float]) -> dict[str, list]:
        """Scorer (beliefs + old log-probs), reference (ref log-probs) and critic (values), concurrently.
        Each time/* is the wall time from the common start to that role's last result."""
        sequences = [t.token_ids for t in trajectories]
        lengths = [len(s) for s in sequences]
        igpo = self.estimator == "igpo"
        per_item: dict[str, list] = {
            "sequences": sequences,
            "belief_points": [t.belief_points if igpo else [] for t in trajectories],
            "action_masks": [t.action_mask for t in trajectories],
        }
        if igpo:
            per_item["answers"] = [self._answers(t) for t in trajectories]
        t0 = time.perf_counter()
        jobs: dict[str, tuple[list[list[int]], list[ray.ObjectRef]]] = {}
        jobs["scoring"] = self.scorer.dispatch_async(
            "score",
            lengths,
            per_item,
            probe_ids=self.probe_ids,
            **({} if igpo else {"answers": None}),
            alias_reduce=self.cfg.algorithm.alias_reduce,
            temperature=self.cfg.rollout.temperature,
        )
        if self.reference is not None:
            jobs["reference"] = self.reference.dispatch_async("log_probs", lengths, {"sequences": sequences})
        if self.critic is not None:
            parts = self.critic.partition(lengths)
            parts += [[] for _ in range(len(self.critic) - len(parts))]  # every rank runs (ZeRO-3)
            forwards = max(
                len(length_batches([lengths[i] for i in p], self.cfg.scorer.token_budget)) for p in parts
            )
            refs = [
                actor.values.remote([sequences[i] for i in p], forwards)
                for actor, p in zip(self.critic.actors, parts, strict=True)
            ]
            jobs["critic"] = (parts, refs)

        results: dict[str, list] = {}
        waiting = {name: list(refs) for name, (_, refs) in jobs.items()}
        while waiting:
            ready, _ = ray.wait([r for refs in waiting.values() for r in refs], num_returns=1)
            for name in list(waiting):
                waiting[name] = [r for r in waiting[name] if r not in ready]
                if not waiting[name]:
                    del waiting[name]
                    times[name] = time.perf_counter() - t0
        n = len(sequences)
        for name, (parts, refs) in jobs.items():
            outs = ray.get(refs)
            if name == "scoring":
                results["beliefs"] = _scatter(n, parts, [o.beliefs for o in outs])
                results["old_log_probs"] = _scatter(n, parts, [o.token_log_probs for o in outs])
            elif name == "reference":
                results["ref_log_probs"] = _scatter(n, parts, outs)
            else:
                results["values"] = _scatter(n, parts, outs)
        if not igpo:
            results.pop("beliefs")
        return results

    def _experiences(
        self, trajectories: list[Trajectory], scored: dict[str, list], outcomes: list[float]
    ) -> tuple[list[Experience], list[list[float]], list[list[float]]]:
        """Experiences to train on, per-turn advantages (for the rollouts file), turn rewards."""
        algo = self.cfg.algorithm
        masks = [torch.tensor(t.action_mask, dtype=torch.bool) for t in trajectories]
        lengths = [len(t.token_ids) for t in trajectories]
        num_turns = [t.num_turns for t in trajectories]
        returns: list[torch.Tensor] | list[None] = [None] * len(trajectories)
        if self.estimator == "ppo":
            adv_rows, returns = ppo_advantages(
                outcomes, scored["values"], masks, gamma=algo.gae_gamma, lam=algo.gae_lambda
            )
            rewards = [[r] for r in outcomes]
            per_turn = [
                [float(row[a:b].mean()) for a, b in t.turn_spans]
                for row, t in zip(adv_rows, trajectories, strict=True)
            ]
        else:
            rewards = turn_rewards(
                scored.get("beliefs"), outcomes, num_turns, estimator=self.estimator, ig_kind=algo.ig_kind
            )
            per_turn = turn_level_advantages(
                rewards,
                [t.group_id for t in trajectories],
                num_turns,
                gamma=algo.gamma,
                norm=algo.norm,
                eps=algo.adv_eps,
            )
            adv_rows = token_advantage_rows(per_turn, [t.turn_spans for t in trajectories], lengths)
        exps = []
        for i, traj in enumerate(trajectories):
            exps.append(
                Experience(
                    input_ids=torch.tensor(traj.token_ids, dtype=torch.long),
                    action_mask=masks[i],
                    old_log_probs=scored["old_log_probs"][i].float(),
                    advantages=adv_rows[i],
                    ref_log_probs=scored["ref_log_probs"][i] if "ref_log_probs" in scored else None,
                    old_values=scored["values"][i] if "values" in scored else None,
                    returns=returns[i],
                )
            )
        return exps, per_turn, rewards

    def _update(self, exps: list[Experience], step: int) -> dict[str, float]:
        """Policy (and critic) updates, concurrently; stats averaged over ranks by action tokens."""
        t = self.cfg.train
        split = {"epochs": t.ppo_epochs, "mini_batches": t.mini_batches, "seed": t.seed, "step": step}
        plan = split_for_update(exps, world_size=len(self.policy), **split)
        policy_refs = [a.update.remote(p) for a, p in zip(self.policy.actors, plan, strict=True)]
        critic_refs = []
        if self.critic is not None:
            critic_plan = split_for_update(exps, world_size=len(self.critic), **split)
            critic_refs = [a.update.remote(p) for a, p in zip(self.critic.actors, critic_plan, strict=True)]
        out = {f"policy/{k}": v for k, v in _merge_rank_stats(ray.get(policy_refs)).items()}
        if critic_refs:
            out.update({f"critic/{k}": v for k, v in _merge_rank_stats(ray.get(critic_refs)).items()})
        return out

    def _sync_weights(self, version: int) -> None:
        """θ_old := θ for the rollout and scorer actors (object store; NCCL into vLLM engines)."""
        refs = self.policy.call_async("state_dict_for_sync")  # collective under ZeRO-3; rank 0's is the dict
        state_dict_ref = refs[0]
        waits = list(refs[1:])
        if isinstance(self.rollouts, HFRollouts):
            waits += self.rollouts.push_weights(state_dict_ref, version)
        else:
            self.rollouts.broadcast_from(self.policy, version)
        waits += [a.update_weights.remote(state_dict_ref, version) for a in self.scorer.actors]
        ray.get(waits)

    # -------------------------------------------------------------------------------- persistence
    def save_checkpoint(self) -> Path:
        """Policy/critic DeepSpeed checkpoints + trainer state + config, atomically (checkpoint.py)."""
        tmp = self.checkpoints.begin(self.step)
        refs = self.policy.call_async("save_checkpoint", str(tmp / "policy"))
        if self.critic is not None:
            refs += self.critic.call_async("save_checkpoint", str(tmp / "critic"))
        ray.get(refs)
        save_trainer_state(
            tmp,
            {
                "step": self.step,
                "sampler": self.sampler.state_dict(),
                "rng": capture_rng(),
                # actors derive every sampling seed from (seed, step, prompt offset): nothing else to store
                "seed": self.cfg.train.seed,
            },
        )
        (tmp / "config.yaml").write_text(dump_config(self.cfg), encoding="utf-8")
        return self.checkpoints.commit(tmp, self.step)

    def _save_rollouts(
        self,
        step: int,
        trajectories: list[Trajectory],
        outcomes: list,
        scored: dict[str, list],
        rewards: list[list[float]],
        per_turn: list[list[float]],
    ) -> None:
        directory = self.run_dir / "rollouts"
        directory.mkdir(exist_ok=True)
        beliefs = scored.get("beliefs")
        lines = []
        for i, (traj, out) in enumerate(zip(trajectories, outcomes, strict=True)):
            row = traj.to_json(self.tokenizer)
            row.update(
                step=step,
                estimator=self.estimator,
                outcome_reward=out.reward,
                f1=out.f1,
                em=out.em,
                beliefs=list(beliefs[i]) if beliefs is not None else None,
                turn_rewards=rewards[i],
                turn_advantages=per_turn[i],
            )
            lines.append(json.dumps(row))
        tmp = directory / f".step_{step:05d}.jsonl.tmp"
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.replace(directory / f"step_{step:05d}.jsonl")

    def close(self) -> None:
        """Kill every actor of the run and free its placement groups (the cluster stays up). Idempotent."""
        groups = [self.policy, self.scorer, self.reference, self.critic]
        if isinstance(self.rollouts, HFRollouts):
            groups.append(self.rollouts.group)
        for group in groups:
            if group is not None:
                group.kill()
        release(self.placements)
        self.placements = {}


# ------------------------------------------------------------------------------------------ helpers
def _scatter(n: int, parts: list[list[int]], outs: list[list[Any]]) -> list[Any]:
    """Per-actor result lists back into item order."""
    result: list[Any] = [None] * n
    for part, out in zip(parts, outs, strict=True):
        if len(out) != len(part):
            raise RuntimeError(f"an actor returned {len(out)} results for {len(part)} items")
        for i, value in zip(part, out, strict=True):
            result[i] = value
    return result


def _merge_rank_stats(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """Stats of the ranks averaged weighted by their action tokens (grad_norm, lr: rank 0's)."""
    weights = [s["action_tokens"] for s in per_rank]
    total = sum(weights) or 1.0
    out = {}
    for key in per_rank[0]:
        if key in ("grad_norm", "lr"):
            out[key] = per_rank[0][key]
        elif key == "action_tokens":
            out[key] = total
        else:
            out[key] = sum(s[key] * w for s, w in zip(per_rank, weights, strict=True)) / total
    return out


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def step_metrics(
    trajectories: list[Trajectory],
    outcomes: list,
    beliefs: list[list[float]] | None,
    rewards: list[list[float]],
    exps: list[Experience],
    estimator: str,
) -> dict[str, float]:
    """Reward, information-gain, advantage and rollout statistics of one step."""
    m: dict[str, float] = {
        "reward/outcome": _mean([o.reward for o in outcomes]),
        "reward/f1": _mean([o.f1 for o in outcomes]),
        "reward/em": _mean([o.em for o in outcomes]),
        "reward/format_fail": _mean([0.0 if o.answered else 1.0 for o in outcomes]),
    }
    if estimator == "igpo":
        ig = [r for row in rewards for r in row[:-1]]
        m["ig/mean"] = _mean(ig)
        m["ig/std"] = float(np.std(ig)) if ig else float("nan")
        m["ig/positive_frac"] = _mean([1.0 if r > 0 else 0.0 for r in ig])
        m["ig/count"] = float(len(ig))
        if beliefs is not None:
            m["belief/log_b_first"] = _mean([b[0] for b in beliefs])
            m["belief/log_b_last"] = _mean([b[-1] for b in beliefs])
    adv = torch.cat([e.advantages[e.action_mask] for e in exps])
    if adv.numel():
        m["adv/mean"] = float(adv.mean())
        m["adv/std"] = float(adv.std(unbiased=False))
        m["adv/max"] = float(adv.max())
        m["adv/min"] = float(adv.min())
    obs_tokens = [sum(b - a for a, b in t.obs_spans) for t in trajectories]
    m.update(
        {
            "rollout/turns": _mean([t.num_turns for t in trajectories]),
            "rollout/searches": _mean([t.n_searches for t in trajectories]),
            "rollout/searched_frac": _mean([1.0 if t.n_searches > 0 else 0.0 for t in trajectories]),
            "rollout/search_errors": _mean([t.n_search_errors for t in trajectories]),
            "rollout/response_tokens": _mean([e.num_actions for e in exps]),
            "rollout/observation_tokens": _mean(obs_tokens),
            "rollout/total_tokens": _mean([e.num_tokens for e in exps]),
            "rollout/trajectories": float(len(trajectories)),
        }
    )
    for reason in ("answer", "invalid", "max_turns", "max_length", "eos"):
        m[f"rollout/finish_{reason}"] = _mean(
            [1.0 if t.finish_reason == reason else 0.0 for t in trajectories]
        )
    return m

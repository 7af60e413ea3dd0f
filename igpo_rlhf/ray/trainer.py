"""The single controller: one loop per training step, driving every role's actors.

    step: sample prompts → n rollouts each (rollout actors / vLLM engines)
          → beliefs log b_{i,t} + old log-probs (belief scorer, one pass)  ┐ concurrently
          → ref log-probs (reference, when kl_coef > 0)                    │
          → values V(s_j) (critic, estimator=ppo)                          ┘
          → outcomes r_{i,T_i}, IG rewards r_{i,t}, advantages Â_{i,t} (igpo | grpo | ppo)
          → policy (and critic) update → θ_old pushed to rollout and scorer actors
          → metrics, rollouts JSONL, checkpoint

`train_step` reads top to bottom; the math lives in igpo_rlhf.algo (wired by igpo_rlhf.training.experience),
and this module only moves typed records between actors, times each phase and keeps the run resumable.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import ray

from igpo_rlhf.config import Config, ConfigError, dump_config
from igpo_rlhf.data.datasets import PromptSampler
from igpo_rlhf.models.loading import load_tokenizer
from igpo_rlhf.ray.critic import CriticActor, forward_count
from igpo_rlhf.ray.generators import HFRollouts, Rollouts, VLLMRollouts
from igpo_rlhf.ray.group import ActorGroup, Dispatched
from igpo_rlhf.ray.placement import RolePlacement, place_roles, release
from igpo_rlhf.ray.policy import PolicyActor
from igpo_rlhf.ray.reference import ReferenceActor
from igpo_rlhf.ray.scorer import BeliefScorerActor
from igpo_rlhf.rollout.protocols import make_protocol
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
    Credit,
    Outcome,
    Scores,
    assign_credit,
    make_experiences,
    score_outcomes,
)
from igpo_rlhf.training.metrics import MetricsLogger, step_metrics

if TYPE_CHECKING:
    from collections.abc import Iterator

    from igpo_rlhf.rollout.trajectory import PromptItem, Trajectory


class Trainer:
    """Builds the actors of a run and trains; `run()` does every step, `close()` frees the actors.

    The run directory must hold no checkpoint unless `resume` (`igpo train` checks that before anything
    starts: igpo_rlhf.training.checkpoint.check_run_dir)."""

    def __init__(
        self, cfg: Config, prompts: list[PromptItem], search_url: str, *, resume: bool = False
    ) -> None:
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
        self.placements: dict[str, RolePlacement] = {}
        self.policy: ActorGroup | None = None
        self.critic: ActorGroup | None = None
        self.scorer: ActorGroup | None = None
        self.reference: ActorGroup | None = None
        self.rollouts: Rollouts | None = None
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
        roles = ["policy", "scorer"]
        if cfg.rollout.engine == "hf":
            roles.insert(0, "rollout")
        if cfg.algorithm.kl_coef > 0:
            roles.append("reference")
        if self.estimator == "ppo":
            roles.append("critic")
        self.placements = placements = place_roles(cfg.resources, roles)

        total_steps = cfg.train.steps * cfg.train.ppo_epochs * cfg.train.mini_batches
        self.policy = ActorGroup(PolicyActor, placements["policy"], distributed=True)
        pending = self.policy.call_async(
            "init_model",
            cfg,
            grad_accum=self._grad_accum(len(self.policy)),
            total_optimizer_steps=total_steps,
        )
        if "critic" in roles:
            self.critic = ActorGroup(CriticActor, placements["critic"], distributed=True)
            pending += self.critic.call_async(
                "init_model",
                cfg,
                grad_accum=self._grad_accum(len(self.critic)),
                total_optimizer_steps=total_steps,
            )
        self.scorer = ActorGroup(
            BeliefScorerActor,
            placements["scorer"],
            init_args=(cfg.model.path,),
            init_kwargs={
                "dtype": cfg.model.dtype,
                "device": "cuda" if placements["scorer"].num_gpus > 0 else "cpu",
                "token_budget": cfg.scorer.token_budget,
                "trust_remote_code": cfg.model.trust_remote_code,
            },
        )
        pending += self.scorer.call_async("weights_version")
        if "reference" in roles:
            self.reference = ActorGroup(ReferenceActor, placements["reference"], init_args=(cfg,))
            pending += self.reference.call_async("ready")
        if cfg.rollout.engine == "hf":
            self.rollouts = HFRollouts(cfg, placements["rollout"], search_url)
        else:
            self.rollouts = VLLMRollouts(cfg, search_url, self.tokenizer, self.protocol)
        pending += self.rollouts.ready()
        ray.get(pending)

    def _grad_accum(self, world_size: int) -> int:
        rollouts = self.cfg.train.prompts_per_step * self.cfg.rollout.n_samples
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
        algo = self.cfg.algorithm
        times: dict[str, float] = {}
        t_step = time.perf_counter()
        prompts = self.sampler.next_batch()
        with _timed(times, "rollout"):
            trajectories = self.rollouts.generate(prompts, step)
        scores = self._score(trajectories, times)  # θ_old log-probs, beliefs; π_ref log-probs; values
        outcomes = score_outcomes(trajectories, algo)  # r_{i,T_i}: F1 / EM / format penalty
        credit = assign_credit(trajectories, outcomes, scores, algo)  # r_{i,t}, Â_{i,t}, per-token Â
        experiences = make_experiences(trajectories, scores, credit)
        with _timed(times, "update"):
            update_stats = self._update(experiences, step)
        with _timed(times, "sync"):
            self._sync_weights(version=step)
        if self.cfg.logging.save_rollouts:
            self._save_rollouts(step, trajectories, outcomes, scores, credit)

        metrics = step_metrics(trajectories, outcomes, scores.beliefs, credit, experiences, self.estimator)
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

    def _score(self, trajectories: list[Trajectory], times: dict[str, float]) -> Scores:
        """Scorer (beliefs + old log-probs), reference (ref log-probs) and critic (values), concurrently.
        Each time/<role> is the wall time from the common start to that role's last result."""
        n = len(trajectories)
        sequences = [t.token_ids for t in trajectories]
        masks = [t.action_mask for t in trajectories]
        lengths = [len(s) for s in sequences]
        igpo = self.estimator == "igpo"
        t0 = time.perf_counter()
        scoring = self.scorer.dispatch_async(
            "score",
            lengths,
            {
                "sequences": sequences,
                "belief_points": [t.belief_points if igpo else [] for t in trajectories],
                "answers": [self._answers(t) if igpo else None for t in trajectories],
                "action_masks": masks,
            },
            probe_ids=self.probe_ids,
            alias_reduce=self.cfg.algorithm.alias_reduce,
            temperature=self.cfg.rollout.temperature,
        )
        jobs = {"scoring": scoring}
        if self.reference is not None:
            jobs["reference"] = self.reference.dispatch_async(
                "log_probs", lengths, {"sequences": sequences, "action_masks": masks}
            )
        if self.critic is not None:
            jobs["critic"] = self._critic_values(sequences)
        _wait_timed(jobs, t0, times)

        # each scorer returns a ScoreResult for its share: (beliefs, token log-probs) per trajectory
        scored = scoring.gather(
            n, lambda result: list(zip(result.beliefs, result.token_log_probs, strict=True))
        )
        return Scores(
            old_log_probs=[log_probs for _, log_probs in scored],
            beliefs=[beliefs for beliefs, _ in scored] if igpo else None,
            ref_log_probs=jobs["reference"].gather(n) if "reference" in jobs else None,
            values=jobs["critic"].gather(n) if "critic" in jobs else None,
        )

    def _critic_values(self, sequences: list[list[int]]) -> Dispatched:
        """Values of every sequence from the critic ranks. Every rank runs as many forward passes as the
        busiest one (a ZeRO-3 forward gathers parameters collectively), so each gets that count."""
        parts = self.critic.partition([len(s) for s in sequences])
        parts += [[] for _ in range(len(self.critic) - len(parts))]
        forwards = max(
            forward_count([len(sequences[i]) for i in p], self.cfg.scorer.token_budget) for p in parts
        )
        refs = [
            actor.values.remote([sequences[i] for i in p], forwards)
            for actor, p in zip(self.critic.actors, parts, strict=True)
        ]
        return Dispatched(parts, refs)

    def _update(self, experiences: list[Experience], step: int) -> dict[str, float]:
        """Policy (and critic) updates, concurrently; stats averaged over ranks by action tokens."""
        t = self.cfg.train
        split = {"epochs": t.ppo_epochs, "mini_batches": t.mini_batches, "seed": t.seed, "step": step}
        plan = split_for_update(experiences, world_size=len(self.policy), **split)
        policy_refs = [a.update.remote(p) for a, p in zip(self.policy.actors, plan, strict=True)]
        critic_refs = []
        if self.critic is not None:
            critic_plan = split_for_update(experiences, world_size=len(self.critic), **split)
            critic_refs = [a.update.remote(p) for a, p in zip(self.critic.actors, critic_plan, strict=True)]
        out = {f"policy/{k}": v for k, v in _merge_rank_stats(ray.get(policy_refs)).items()}
        if critic_refs:
            out.update({f"critic/{k}": v for k, v in _merge_rank_stats(ray.get(critic_refs)).items()})
        return out

    def _sync_weights(self, version: int) -> None:
        """θ_old := θ for the rollout and scorer actors (object store; NCCL into vLLM engines)."""
        refs = self.policy.call_async("state_dict_for_sync")  # collective under ZeRO-3; rank 0's is the dict
        state_dict = refs[0]
        waits = list(refs[1:])
        waits += self.rollouts.push_weights(self.policy, state_dict, version)
        waits += [a.update_weights.remote(state_dict, version) for a in self.scorer.actors]
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
        outcomes: list[Outcome],
        scores: Scores,
        credit: Credit,
    ) -> None:
        directory = self.run_dir / "rollouts"
        directory.mkdir(exist_ok=True)
        lines = []
        for i, (traj, out) in enumerate(zip(trajectories, outcomes, strict=True)):
            row = traj.to_json(self.tokenizer)
            row.update(
                step=step,
                estimator=self.estimator,
                outcome_reward=out.reward,
                f1=out.f1,
                em=out.em,
                beliefs=list(scores.beliefs[i]) if scores.beliefs is not None else None,
                turn_rewards=credit.turn_rewards[i],
                turn_advantages=credit.turn_advantages[i],
            )
            lines.append(json.dumps(row))
        tmp = directory / f".step_{step:05d}.jsonl.tmp"
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.replace(directory / f"step_{step:05d}.jsonl")

    def close(self) -> None:
        """Kill every actor of the run and free its placement groups (the cluster stays up). Idempotent."""
        if self.rollouts is not None:
            self.rollouts.close()
        for group in (self.policy, self.scorer, self.reference, self.critic):
            if group is not None:
                group.kill()
        release(self.placements)
        self.placements = {}


# ------------------------------------------------------------------------------------------ helpers
@contextmanager
def _timed(times: dict[str, float], name: str) -> Iterator[None]:
    """Records the wall time of the block as times[name]."""
    t0 = time.perf_counter()
    yield
    times[name] = time.perf_counter() - t0


def _wait_timed(jobs: dict[str, Dispatched], t0: float, times: dict[str, float]) -> None:
    """Wait for every job; times[name] = seconds from t0 until that job's last actor finished."""
    waiting = {name: list(job.refs) for name, job in jobs.items()}
    while waiting:
        ready, _ = ray.wait([r for refs in waiting.values() for r in refs], num_returns=1)
        for name in list(waiting):
            waiting[name] = [r for r in waiting[name] if r not in ready]
            if not waiting[name]:
                del waiting[name]
                times[name] = time.perf_counter() - t0


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

"""The single controller: one loop per training step, driving every role's actors.

    step: sample prompts → n rollouts each (rollout actors / vLLM engines)
          → beliefs log b_{i,t} + old log-probs (belief scorer, one pass)  ┐ concurrently
          → ref log-probs (reference, when kl_coef > 0)                    │
          → values V(s_j) (critic, estimator=ppo)                          ┘
          → outcomes r_{i,T_i}, IG rewards r_{i,t}, advantages Â_{i,t} (igpo | grpo | ppo)
          → policy (and critic) update → θ_old pushed to rollout and scorer actors
          → metrics, rollouts JSONL, checkpoint

A batch whose searches failed past `search.failures` is not trained on: the trainer waits for the backend
(checked as at start-up) and rolls the same prompts out again, or stops with a checkpoint (SearchBackendDown).
Every wait on an actor has a deadline (`train.timeouts`); a dead or stuck actor stops the run with its role
named (igpo_rlhf.ray.watch: ActorDied, ActorTimedOut). Each is recorded in run_dir/events.jsonl.

`train_step` reads top to bottom; the math lives in igpo_rlhf.algo (wired by igpo_rlhf.training.experience),
and this module only moves typed records between actors, times each phase and keeps the run resumable.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from igpo_rlhf.config import Config, ConfigError, dump_config
from igpo_rlhf.data.datasets import PromptSampler
from igpo_rlhf.models.loading import load_tokenizer
from igpo_rlhf.ray import watch
from igpo_rlhf.ray.critic import CriticActor, forward_count
from igpo_rlhf.ray.generators import HFRollouts, Rollouts, VLLMRollouts
from igpo_rlhf.ray.group import ActorGroup, Dispatched
from igpo_rlhf.ray.placement import RolePlacement, place_roles, release
from igpo_rlhf.ray.policy import PolicyActor
from igpo_rlhf.ray.reference import ReferenceActor
from igpo_rlhf.ray.scorer import BeliefScorerActor
from igpo_rlhf.ray.weight_sync import check_same_parameters, scorer_transport
from igpo_rlhf.rollout.protocols import make_protocol
from igpo_rlhf.rollout.searcher import check_search
from igpo_rlhf.rollout.vllm_engine import require_vllm
from igpo_rlhf.scoring.probe import alias_token_ids, probe_token_ids, run_answer_separator
from igpo_rlhf.training.batch import Experience, grad_accum_steps, per_rank_minibatch_size, split_for_update
from igpo_rlhf.training.checkpoint import (
    CheckpointManager,
    capture_rng,
    load_trainer_state,
    restore_rng,
    save_trainer_state,
    step_dir_name,
)
from igpo_rlhf.training.collapse import CollapseWatch
from igpo_rlhf.training.experience import (
    Credit,
    Outcome,
    Scores,
    assign_credit,
    make_experiences,
    score_outcomes,
)
from igpo_rlhf.training.metrics import MetricsLogger, append_event, step_metrics
from igpo_rlhf.training.search_guard import SearchGuard, SearchVerdict

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from igpo_rlhf.rollout.trajectory import PromptItem, Trajectory


class Trainer:
    """Builds the actors of a run and trains; `run()` does every step, `close()` frees the actors.

    `eval_prompts`: the fixed held-out questions validated on every `eval.every_n_steps` steps (and at step 0
    and at the end) with the rollout actors and the `eval` section's sampling; none: no validation. The run
    directory must hold no checkpoint unless `resume` (`igpo train` checks that before anything starts:
    igpo_rlhf.training.checkpoint.check_run_dir)."""

    def __init__(
        self,
        cfg: Config,
        prompts: list[PromptItem],
        search_url: str,
        *,
        resume: bool = False,
        eval_prompts: list[PromptItem] | None = None,
    ) -> None:
        self.cfg = cfg
        self.search_url = search_url
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
        self.eval_prompts = list(eval_prompts or [])
        self.best: dict[str, float] | None = None  # {"step", "eval/f1", ...} of checkpoints/best
        self.collapse = CollapseWatch(cfg.train.collapse)
        self.search_guard = SearchGuard(cfg.search.failures)
        self._step_start: tuple[dict, dict] | None = None  # sampler and RNG states before the step's batch
        self.lr_scale = 1.0  # lowered by collapse rollbacks
        self.rollbacks = 0
        # checkpoints known good: a step's metrics describe the policy it started from, so the checkpoint of
        # step c (θ_c) is confirmed when step c + 1 (rollouts, KL and entropy of θ_c) shows no collapse
        self.good_steps: set[int] = set()
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
        except BaseException as exc:
            if isinstance(exc, watch.ActorFailed):
                self._record_actor_failure(exc)
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
        if cfg.rollout.engine == "vllm":
            require_vllm()  # before any actor is placed
        self.placements = placements = place_roles(cfg.resources, roles)
        self._scorer_transport = scorer_transport(
            placements["policy"].num_gpus, placements["scorer"].num_gpus
        )

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
                "logits_chunk": cfg.scorer.logits_chunk,
                "trust_remote_code": cfg.model.trust_remote_code,
                "release_memory": cfg.resources.colocate,
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
        self._wait(pending, "start-up (model loads, DeepSpeed init)", "start_s")
        if self._scorer_transport == "nccl":
            self._join_scorer_weight_group()

    def _wait(self, refs: list[ray.ObjectRef], doing: str, timeout: str = "call_s") -> list[Any]:
        """The results of `refs` within train.timeouts.<timeout>; ActorDied / ActorTimedOut name the actor."""
        seconds = getattr(self.cfg.train.timeouts, timeout)
        return watch.get(refs, doing, seconds, f"train.timeouts.{timeout}")

    def _join_scorer_weight_group(self) -> None:
        """GPU runs: the NCCL group of the policy's rank 0 and the scorers (weight_sync.py), made once; the
        parameters rank 0 sends are checked against each scorer's."""
        doing = "weight group set-up (policy rank 0 and the scorers)"
        [(address, port)] = self._wait(
            [self.policy.actors[0].weight_group_address.remote()], doing, "start_s"
        )
        world = len(self.scorer) + 1
        sent = self.policy.call_async("join_scorer_group", address, port, world, "nccl")
        received = [
            a.join_weight_group.remote(address, port, k + 1, world, "nccl")
            for k, a in enumerate(self.scorer.actors)
        ]
        joined = self._wait(sent + received, doing, "start_s")  # one collective: wait for all together
        specs = joined[0]
        for k, spec in enumerate(joined[len(sent) :]):
            check_same_parameters(specs, spec, f"scorer actor {k}")

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
        self._load_actor_checkpoints(directory)
        self._restore(state)
        self._sync_weights(version=step)
        print(f"resumed from {directory} (step {step})", flush=True)

    def _restore(self, state: dict) -> None:
        """The driver's share of a checkpoint: sampler position, RNG, step, collapse watch, lr scale."""
        self.sampler.load_state_dict(state["sampler"])
        restore_rng(state["rng"])
        self.step = state["step"]
        self.best = state.get("best")
        self.good_steps = set(state.get("good_steps", []))  # its own step is confirmed by the next one
        self.rollbacks = state.get("rollbacks", 0)
        if "collapse" in state:
            self.collapse.load_state_dict(state["collapse"])
        if "search_guard" in state:
            self.search_guard.load_state_dict(state["search_guard"])
        self._set_lr_scale(state.get("lr_scale", 1.0))

    def _load_actor_checkpoints(self, directory: Path) -> None:
        """The policy's (and critic's) weights and optimizer state from checkpoint `directory`."""
        refs = self.policy.call_async("load_checkpoint", str(directory / "policy"))
        if self.critic is not None:
            refs += self.critic.call_async("load_checkpoint", str(directory / "critic"))
        self._wait(refs, f"checkpoint load from {directory}", "start_s")

    def _set_lr_scale(self, scale: float) -> None:
        """Policy (and critic) learning rates = the configured ones x scale."""
        self.lr_scale = scale
        refs = self.policy.call_async("set_base_lr", self.cfg.train.lr * scale)
        if self.critic is not None:
            refs += self.critic.call_async("set_base_lr", self.cfg.train.critic_lr * scale)
        self._wait(refs, "learning-rate change")

    # ---------------------------------------------------------------------------------------- loop
    def run(self) -> list[dict[str, float]]:
        """Train from the current step to `train.steps`; returns the metrics of the steps run.

        Validation (when `eval_prompts` were given) runs before the first step of a fresh run (logged as step
        0), every `eval.every_n_steps` steps and after the last. A collapse (train.collapse) stops the run
        with `TrainingCollapsed`, or rolls it back to the last good checkpoint (train.on_collapse); a search
        backend that does not recover with `SearchBackendDown`; a dead or stuck actor with watch.ActorFailed."""
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
            if self.step == 0 and self._validation_due(0):
                logger.log(0, self.validate(0))
            while self.step < cfg.train.steps:
                step = self.step + 1
                metrics = self.train_step(step)
                self.step = step
                if self._validation_due(step):
                    metrics.update(self.validate(step))
                reason = self.collapse.check(step, metrics) if cfg.train.on_collapse != "ignore" else None
                if reason is None and (self.checkpoints.root / step_dir_name(step - 1)).is_dir():
                    self.good_steps.add(step - 1)  # θ_{step-1} just showed no collapse
                if reason is None and (step % cfg.checkpoint.every_n_steps == 0 or step == cfg.train.steps):
                    t0 = time.perf_counter()
                    self.save_checkpoint()
                    metrics["time/checkpoint"] = time.perf_counter() - t0
                logger.log(step, metrics)
                history.append(metrics)
                if reason is not None:
                    back_to = self._on_collapse(step, reason)  # raises TrainingCollapsed to stop
                    logger.rewind(back_to, {"event": "rollback", "step": step, "to_step": back_to,
                                            "reason": reason, "lr_scale": self.lr_scale})  # fmt: skip
        except watch.ActorFailed as exc:
            self._record_actor_failure(exc)
            raise
        finally:
            logger.close()
        return history

    def _record_actor_failure(self, exc: watch.ActorFailed) -> None:
        kind = "actor_timeout" if isinstance(exc, watch.ActorTimedOut) else "actor_died"
        append_event(
            self.run_dir,
            {"event": kind, "step": self.step, "actors": exc.actors, "doing": exc.doing, "error": str(exc)},
        )

    def _validation_due(self, step: int) -> bool:
        every = self.cfg.eval.every_n_steps
        if not self.eval_prompts or every == 0:
            return False
        return step == 0 or step % every == 0 or step == self.cfg.train.steps

    def _on_collapse(self, step: int, reason: str) -> int:
        """Stop (TrainingCollapsed) or roll back to the last good checkpoint with a lower learning rate;
        returns the step rolled back to."""
        good = self._last_good_checkpoint(step)
        limit = self.cfg.train.collapse.max_rollbacks
        if self.cfg.train.on_collapse == "stop" or good is None or self.rollbacks >= limit:
            why = {
                "stop": "train.on_collapse=stop",
                "no good": "no confirmed-good checkpoint to roll back to",
                "limit": f"train.collapse.max_rollbacks={limit} rollbacks done",
            }["stop" if self.cfg.train.on_collapse == "stop" else "no good" if good is None else "limit"]
            keep = (
                f"the last good checkpoint is {good[1]} (`igpo export` it, or set train.on_collapse=rollback)"
                if good is not None
                else "no checkpoint was confirmed good (a checkpoint is, once the next step shows no collapse)"
            )
            raise TrainingCollapsed(f"training collapsed at step {step}: {reason}. Stopped ({why}); {keep}")
        good_step, directory = good
        self.rollbacks += 1
        scale = self.lr_scale * self.cfg.train.collapse.lr_factor
        print(
            f"training collapsed at step {step}: {reason}; rolling back to {directory} (step {good_step}) "
            f"with the learning rate x{scale:g} (rollback {self.rollbacks}/{self.cfg.train.collapse.max_rollbacks})",
            flush=True,
        )
        self._load_actor_checkpoints(directory)
        rollbacks, good_steps = self.rollbacks, self.good_steps
        self._restore(load_trainer_state(directory))
        self.rollbacks = rollbacks
        self._set_lr_scale(scale)
        # checkpoints after the good one hold the collapsed policy: a later rollback must not return there
        for later in self.checkpoints.steps():
            if later > good_step:
                shutil.rmtree(self.checkpoints.root / step_dir_name(later))
        self.good_steps = {s for s in good_steps if s <= good_step}
        self._sync_weights(version=good_step)
        return good_step

    def _last_good_checkpoint(self, step: int) -> tuple[int, Path] | None:
        """The newest existing confirmed-good checkpoint at least `train.collapse.window` steps before `step`
        (a collapse shows in the averaged training F1 only some steps after it began), else None."""
        steps = [s for s in self.checkpoints.steps() if s in self.good_steps]
        early = [s for s in steps if s <= step - self.cfg.train.collapse.window]
        if not early:
            return None
        return max(early), self.checkpoints.root / step_dir_name(max(early))

    def validate(self, step: int) -> dict[str, float]:
        """Held-out scores of the current policy on `eval_prompts` (greedy by default: the `eval` section's
        sampling), through the rollout actors and the eval package's scoring; `eval/...` metrics. A new best
        eval/f1 is exported to checkpoints/best as a Hugging Face directory."""
        from igpo_rlhf.eval import aggregate, score_rows
        from igpo_rlhf.eval.run import eval_sampling

        t0 = time.perf_counter()
        # a fixed sampling seed for every validation (greedy ignores it): seeds derive from (seed, "step", offset)
        trajectories, verdict = self._rollout(
            lambda: self.rollouts.generate(
                self.eval_prompts, _EVAL_SEED_STEP + self.cfg.eval.seed, sampling=eval_sampling(self.cfg.eval)
            ),
            step,
            validation=True,
        )
        rows = score_rows(trajectories)
        metrics = aggregate(rows).metrics("eval")
        metrics["eval/search_error_rate"] = verdict.rate
        if self.cfg.logging.save_rollouts:
            self._write_rows(self.run_dir / "eval_rollouts" / f"step_{step:05d}.jsonl", trajectories, rows)
        if self.best is None or metrics["eval/f1"] > self.best["eval/f1"]:
            self._export_best(step, metrics)
        metrics["eval/best_f1"] = self.best["eval/f1"]
        metrics["time/eval"] = time.perf_counter() - t0
        return metrics

    def _export_best(self, step: int, metrics: dict[str, float]) -> None:
        tmp, final = self.checkpoints.root / ".tmp-best", self.checkpoints.root / "best"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        self._wait(
            self.policy.call_async("export_hf", str(tmp), self.cfg.model.path), f"best export at step {step}"
        )
        self.best = {"step": step, **{k: v for k, v in metrics.items() if k in ("eval/f1", "eval/em")}}
        (tmp / "best.json").write_text(json.dumps(self.best, indent=2) + "\n", encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)

    def train_step(self, step: int) -> dict[str, float]:
        """One step; returns its metrics (time/checkpoint is added by `run`)."""
        algo = self.cfg.algorithm
        times: dict[str, float] = {}
        t_step = time.perf_counter()
        self._step_start = (self.sampler.state_dict(), capture_rng())
        prompts = self.sampler.next_batch()

        def generate() -> list[Trajectory]:
            with _timed(times, "rollout"):  # the batch used: a rejected one is rolled out again
                return self.rollouts.generate(prompts, step)

        trajectories, verdict = self._rollout(generate, step)  # searches failed past search.failures: again
        skipped, waited = self.search_guard.accept(verdict)
        scores = self._score(trajectories, times, step)  # θ_old log-probs, beliefs; π_ref log-probs; values
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
        metrics["rollout/search_error_rate"] = verdict.rate
        metrics["search/window_error_rate"] = verdict.window_rate
        metrics["search/skipped_batches"] = float(skipped)
        metrics["search/wait_s"] = waited
        metrics["time/step"] = time.perf_counter() - t_step - waited
        return metrics

    # ------------------------------------------------------------------------------- search failures
    def _rollout(
        self, generate: Callable[[], list[Trajectory]], step: int, *, validation: bool = False
    ) -> tuple[list[Trajectory], SearchVerdict]:
        """`generate()`'s rollouts once their searches pass the search guard (search.failures); a rejected
        batch (same prompts, same seeds) is rolled out again once the backend answers its check. Raises
        SearchBackendDown, with a checkpoint saved, when the backend does not recover in time."""
        while True:
            with watch.naming("generate for validation" if validation else f"generate for step {step}"):
                trajectories = generate()  # (the vllm engines are waited on inside the agent loop)
            verdict = self.search_guard.judge(trajectories, windowed=not validation)
            if verdict.reason is None:
                return trajectories, verdict
            self._await_search(step, verdict, validation=validation)

    def _await_search(self, step: int, verdict: SearchVerdict, *, validation: bool) -> None:
        """Record a rejected batch, then wait for the backend; returns once it recovered, else stops."""
        url, guard = self.search_url, self.search_guard
        what = "the validation rollouts" if validation else "the batch"
        guard.reject()
        append_event(
            self.run_dir,
            {
                "event": "search_batch_rejected",
                "step": step,
                "what": what,
                "errors": verdict.errors,
                "searches": verdict.searches,
                "window_error_rate": verdict.window_rate,
                "reason": verdict.reason,
            },
        )
        print(
            f"step {step}: {what} is not used: {verdict.reason}; waiting for the search backend at {url}",
            flush=True,
        )
        recovery = guard.wait_for_backend(
            lambda: check_search(url, self.cfg.search),
            lambda line: print(f"step {step}: {line}", flush=True),
            reason=verdict.reason or "",
        )
        if recovery.recovered:
            append_event(
                self.run_dir, {"event": "search_recovered", "step": step, "waited_s": recovery.waited_s}
            )
            print(
                f"step {step}: the search backend at {url} answers again after {recovery.waited_s:.0f} s; "
                f"rolling {what} out again",
                flush=True,
            )
            return
        checkpoint = self._checkpoint_for_stop(in_step=not validation)
        append_event(
            self.run_dir,
            {
                "event": "search_down",
                "step": step,
                "error": recovery.error,
                "checkpoint": str(checkpoint) if checkpoint else None,
            },
        )
        kept = (
            f"checkpoint {checkpoint} (step {self.step}) holds the run: rerun with --resume once the backend is back"
            if checkpoint is not None
            else "no step was trained yet: rerun once the backend is back"
        )
        raise SearchBackendDown(
            f"the search backend at {url} did not recover within search.failures.recovery_timeout_s="
            f"{self.cfg.search.failures.recovery_timeout_s:g} s of the first batch it failed (at step {step}); "
            f"last: {recovery.error}. Stopped; no step was trained on a failed batch; {kept}"
        )

    def _checkpoint_for_stop(self, *, in_step: bool) -> Path | None:
        """The checkpoint of the last step trained (saved now unless it exists); None before step 1. Inside a
        step, the sampler and RNG go back to before its batch, so --resume rolls out the same prompts."""
        if in_step and self._step_start is not None:
            self.sampler.load_state_dict(self._step_start[0])
            restore_rng(self._step_start[1])
        if self.step == 0:
            return None
        latest = self.checkpoints.latest()
        if latest is not None and latest[0] == self.step:
            return latest[1]
        return self.save_checkpoint()

    # ------------------------------------------------------------------------------------- phases
    def _answers(self, traj: Trajectory) -> list[list[int]]:
        key = tuple(traj.golds)
        if key not in self._alias_cache:
            self._alias_cache[key] = alias_token_ids(
                self.tokenizer, self.protocol.answer_probe_text, traj.golds, run_answer_separator(self.cfg)
            )
        return self._alias_cache[key]

    def _score(self, trajectories: list[Trajectory], times: dict[str, float], step: int) -> Scores:
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
        doing = f"scoring for step {step}"
        _wait_timed(jobs, t0, times, doing, self.cfg.train.timeouts.call_s)

        with watch.naming(doing):
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
        stats = self._wait(policy_refs + critic_refs, f"update for step {step}")
        out = {f"policy/{k}": v for k, v in _merge_rank_stats(stats[: len(policy_refs)]).items()}
        if critic_refs:
            out.update({f"critic/{k}": v for k, v in _merge_rank_stats(stats[len(policy_refs) :]).items()})
        return out

    def _sync_weights(self, version: int) -> None:
        """θ_old := θ for the rollout and scorer actors. CPU: the policy's state dict through the object store.
        GPU: NCCL broadcasts from the policy's rank 0 into the vLLM engines and into the scorers
        (igpo_rlhf/ray/weight_sync.py); the state dict is then gathered only for hf rollout actors."""
        by_broadcast = self._scorer_transport == "nccl"
        waits: list[ray.ObjectRef] = []
        state_dict = None
        if not by_broadcast or self.cfg.rollout.engine == "hf":
            refs = self.policy.call_async("state_dict_for_sync")  # ZeRO-3: collective; rank 0's is the dict
            state_dict, waits = refs[0], list(refs[1:])
        waits += self.rollouts.push_weights(self.policy, state_dict, version)
        if by_broadcast:  # rank 0 sends while the scorers receive in place (ZeRO-3: every rank gathers)
            waits += self.policy.call_async("broadcast_to_scorers")
            waits += [a.receive_weights.remote(version) for a in self.scorer.actors]
        else:
            waits += [a.update_weights.remote(state_dict, version) for a in self.scorer.actors]
        self._wait(waits, f"weight sync to version {version}")

    # -------------------------------------------------------------------------------- persistence
    def save_checkpoint(self) -> Path:
        """Policy/critic DeepSpeed checkpoints + trainer state + config, atomically (checkpoint.py)."""
        tmp = self.checkpoints.begin(self.step)
        refs = self.policy.call_async("save_checkpoint", str(tmp / "policy"))
        if self.critic is not None:
            refs += self.critic.call_async("save_checkpoint", str(tmp / "critic"))
        self._wait(refs, f"checkpoint save at step {self.step}")
        save_trainer_state(
            tmp,
            {
                "step": self.step,
                "sampler": self.sampler.state_dict(),
                "rng": capture_rng(),
                # actors derive every sampling seed from (seed, step, prompt offset): nothing else to store
                "seed": self.cfg.train.seed,
                "best": self.best,
                "collapse": self.collapse.state_dict(),
                "lr_scale": self.lr_scale,
                "rollbacks": self.rollbacks,
                "good_steps": sorted(self.good_steps),
                "search_guard": self.search_guard.state_dict(),
            },
        )
        (tmp / "config.yaml").write_text(dump_config(self.cfg), encoding="utf-8")
        # rotation keeps the checkpoint a rollback from the next steps would return to
        anchor = self._last_good_checkpoint(self.step + 1)
        return self.checkpoints.commit(tmp, self.step, keep=frozenset([anchor[0]] if anchor else []))

    def _save_rollouts(
        self,
        step: int,
        trajectories: list[Trajectory],
        outcomes: list[Outcome],
        scores: Scores,
        credit: Credit,
    ) -> None:
        rows = []
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
            rows.append(row)
        _write_jsonl(self.run_dir / "rollouts" / f"step_{step:05d}.jsonl", rows)

    def _write_rows(self, path: Path, trajectories: list[Trajectory], eval_rows: list) -> None:
        """Validation rollouts in the layout of `igpo eval`'s rollouts.jsonl (the viewer reads both)."""
        from igpo_rlhf.eval.run import rollout_row

        rows = [
            rollout_row(t, r, self.tokenizer, chunk=0) for t, r in zip(trajectories, eval_rows, strict=True)
        ]
        _write_jsonl(path, rows)

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
_EVAL_SEED_STEP = 10**9  # validation samples with seeds of their own, apart from every training step's


class TrainingCollapsed(RuntimeError):
    """The run collapsed (train.collapse) and train.on_collapse says stop (or no rollback is left)."""


class SearchBackendDown(RuntimeError):
    """Searches kept failing past search.failures and the backend did not recover within
    search.failures.recovery_timeout_s; the last step trained is checkpointed (--resume continues)."""


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    """Rows as JSON lines, written to a temporary file and renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(path)


@contextmanager
def _timed(times: dict[str, float], name: str) -> Iterator[None]:
    """Records the wall time of the block as times[name]."""
    t0 = time.perf_counter()
    yield
    times[name] = time.perf_counter() - t0


def _wait_timed(
    jobs: dict[str, Dispatched], t0: float, times: dict[str, float], doing: str, timeout_s: float
) -> None:
    """Wait for every job, within train.timeouts.call_s (`timeout_s`); times[name] = seconds from t0 until
    that job's last actor finished."""
    owner = {ref: name for name, job in jobs.items() for ref in job.refs}
    left = {name: len(job.refs) for name, job in jobs.items()}
    for name in [name for name, n in left.items() if n == 0]:
        times[name] = time.perf_counter() - t0
    for ref in watch.wait(list(owner), doing, timeout_s, "train.timeouts.call_s"):
        left[owner[ref]] -= 1
        if left[owner[ref]] == 0:
            times[owner[ref]] = time.perf_counter() - t0


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

"""Beliefs log b_{i,t} at every belief point and the old log-probs, from one pass over each trajectory.

For a batch of trajectories (right-padded):

1. Trajectory pass: one causal pass over the tokens, keeping the KV cache (transformers' DynamicCache). Its
   hidden states give the token log-probs log π(ids[j] | ids[:j]) that PPO needs as old log-probs. Right padding
   keeps every real token at its true RoPE position 0, 1, ...; padding only ever follows real tokens, so under
   the causal mask no real token sees it.
2. Probe pass: every probe block (probe + answer[:-1], one per belief point and alias) in one forward against
   that cache, with explicit position_ids p, p+1, ... and a rectangular additive mask [B, 1, Q, L + Q] in which
   each block sees the cache up to its belief point p and itself causally (`block_attention_mask`). Its hidden
   states give log π(a_j | ids[:p], probe, a_<j) for every answer token. An empty probe is valid: the belief is
   then log π(answer | ids[:p]) directly, and a_1 is predicted by the hidden state of ids[p-1], which the
   trajectory pass already has (a one-token answer then needs no probe pass at all).

The cost over the old-log-prob pass is the probe tokens only, and memory is linear in the context length (no
L x L mask: the trajectory pass lets sdpa apply causality itself). We write this ourselves: OpenRLHF computes
log-probs with one plain forward per sequence and has no per-turn belief.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from igpo_rlhf.algo.belief import log_belief, reduce_aliases
from igpo_rlhf.scoring.budget import DEFAULT_LOGITS_CHUNK, DEFAULT_TOKEN_BUDGET
from igpo_rlhf.scoring.inputs import CheckedTrajectory, TokenIds, check_inputs
from igpo_rlhf.scoring.masks import block_attention_mask
from igpo_rlhf.scoring.plan import (
    ProbeBlock,
    ProbeRound,
    answer_tokens_in_block,
    batches_within_budget,
    probe_rounds,
)


@dataclass
class ScoreResult:
    """What the scorer returns for a batch of trajectories.

    beliefs[i][t]: log b_{i,t} at belief_points[i][t], the gold answer's mean token log-prob (best alias or first).
    token_log_probs[i]: float32 [len(sequences[i])], entry j = log π(seq[j] | seq[:j]) from temperature-scaled
    logits (the old log-probs); 0 at j = 0 and where the action mask is 0.
    """

    beliefs: list[list[float]]
    token_log_probs: list[torch.Tensor]


def score_trajectories(
    model: PreTrainedModel,
    sequences: Sequence[TokenIds],
    belief_points: Sequence[Sequence[int]],
    probe_ids: TokenIds,
    answers: Sequence[Sequence[TokenIds]] | None,
    *,
    action_masks: Sequence[TokenIds] | None = None,
    alias_reduce: str = "max",
    temperature: float = 1.0,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    logits_chunk: int = DEFAULT_LOGITS_CHUNK,
) -> ScoreResult:
    """Beliefs at every belief point and the token log-probs of every trajectory, from the same pass.

    log b_{i,t} = (1/A) Σ_j log π(a_j | sequences[i][:p], probe_ids, a_<j) at belief point p = belief_points[i][t],
    for each gold alias a = answers[i][m] (A tokens); `alias_reduce="max"` keeps the best alias, `"first"` scores
    the first alias only. Beliefs use the policy's own probabilities (temperature 1.0); token log-probs use
    `temperature`, as the sampler did. A trajectory with no belief points costs no probe work (GRPO and PPO runs
    pass empty belief point lists and `answers=None`).

    model: a causal LM from transformers loaded with attn_implementation="sdpa", any device and dtype.
    action_masks[i]: 0/1 per token of sequences[i]; token log-probs are computed only where it is 1.
    token_budget: most padded tokens per forward pass (and rows × longest row per batch, the KV cache size).
    logits_chunk: most hidden states projected to the vocabulary at once.
    probe_ids may be empty (the belief is then the answer's mean log-prob right after the context).
    Raises ValueError naming the trajectory for bad input (a belief point outside 1..len, an empty answer, ids
    outside the vocabulary, lists of different lengths).
    """
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    return _score(
        model,
        sequences,
        belief_points,
        probe_ids,
        answers,
        action_masks=action_masks,
        alias_reduce=alias_reduce,
        temperature=temperature,
        token_budget=token_budget,
        logits_chunk=logits_chunk,
        with_token_log_probs=True,
    )


def score_beliefs(
    model: PreTrainedModel,
    sequences: Sequence[TokenIds],
    belief_points: Sequence[Sequence[int]],
    probe_ids: TokenIds,
    answers: Sequence[Sequence[TokenIds]],
    *,
    alias_reduce: str = "max",
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    logits_chunk: int = DEFAULT_LOGITS_CHUNK,
) -> list[list[float]]:
    """Beliefs log b_{i,t} only, per trajectory and belief point (see `score_trajectories`).

    Skips the token log-probs, and each trajectory is only run up to its last belief point.
    """
    return _score(
        model,
        sequences,
        belief_points,
        probe_ids,
        answers,
        action_masks=None,
        alias_reduce=alias_reduce,
        temperature=1.0,
        token_budget=token_budget,
        logits_chunk=logits_chunk,
        with_token_log_probs=False,
    ).beliefs


def score_token_log_probs(
    model: PreTrainedModel,
    sequences: Sequence[TokenIds],
    *,
    action_masks: Sequence[TokenIds] | None = None,
    temperature: float = 1.0,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    logits_chunk: int = DEFAULT_LOGITS_CHUNK,
) -> list[torch.Tensor]:
    """Token log-probs only (the reference's KL pass): float32 [len(sequences[i])] each, entry j =
    log π(seq[j] | seq[:j]) at temperature `temperature`, 0 at j = 0 and where the action mask is 0.

    The trajectory pass of `score_trajectories` without probe blocks: hidden states are projected to the
    vocabulary only at the wanted positions, `logits_chunk` rows at a time, so no [B, L, V] logits tensor
    exists (at a 152k vocabulary that tensor alone is tens of GB for a paper-scale batch).
    """
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    return _score(
        model,
        sequences,
        [[] for _ in sequences],
        [],
        None,
        action_masks=action_masks,
        alias_reduce="max",
        temperature=temperature,
        token_budget=token_budget,
        logits_chunk=logits_chunk,
        with_token_log_probs=True,
    ).token_log_probs


def _score(
    model: PreTrainedModel,
    sequences: Sequence[TokenIds],
    belief_points: Sequence[Sequence[int]],
    probe_ids: TokenIds,
    answers: Sequence[Sequence[TokenIds]] | None,
    *,
    action_masks: Sequence[TokenIds] | None,
    alias_reduce: str,
    temperature: float,
    token_budget: int,
    logits_chunk: int,
    with_token_log_probs: bool,
) -> ScoreResult:
    decoder, lm_head = _check_model(model)
    for name, value in (("token_budget", token_budget), ("logits_chunk", logits_chunk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    trajectories, probe = check_inputs(
        sequences,
        belief_points,
        probe_ids,
        answers,
        action_masks,
        vocab_size=model.get_input_embeddings().num_embeddings,
        alias_reduce=alias_reduce,
    )
    # per trajectory and belief point: log b of each alias scored so far (reduced over aliases at the end)
    alias_beliefs: list[list[list[float]]] = [[[] for _ in t.points] for t in trajectories]
    token_log_probs = [torch.zeros(len(t.ids), dtype=torch.float32) for t in trajectories]

    # How far each trajectory must be run: to its last belief point, and to its second-to-last token (whose
    # hidden state predicts the last token) when token log-probs are wanted. 0: nothing to do.
    run_lengths = [max([*t.points, len(t.ids) - 1 if with_token_log_probs else 0]) for t in trajectories]
    todo = [i for i, n in enumerate(run_lengths) if n > 0]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in batches_within_budget([run_lengths[i] for i in todo], token_budget):
                rows = [todo[j] for j in batch]
                _score_batch(
                    decoder,
                    lm_head,
                    [trajectories[i] for i in rows],
                    [run_lengths[i] for i in rows],
                    probe,
                    alias_beliefs=[alias_beliefs[i] for i in rows],
                    token_log_probs=[token_log_probs[i] for i in rows] if with_token_log_probs else None,
                    temperature=temperature,
                    token_budget=token_budget,
                    logits_chunk=logits_chunk,
                )
    finally:
        model.train(was_training)
    beliefs = [[reduce_aliases(values, alias_reduce) for values in per_point] for per_point in alias_beliefs]
    return ScoreResult(beliefs=beliefs, token_log_probs=token_log_probs if with_token_log_probs else [])


def _check_model(model: PreTrainedModel) -> tuple[nn.Module, nn.Module]:
    """The decoder (hidden states) and the LM head of a causal LM whose attention takes our float 4D masks."""
    config = model.config
    if config._attn_implementation != "sdpa":
        raise ValueError(
            f"the model uses attn_implementation={config._attn_implementation!r}; the scorer needs 'sdpa' "
            "(load it with from_pretrained(..., attn_implementation='sdpa')), which applies our 4D float masks"
        )
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if layer_types != {"full_attention"}:
        raise ValueError(
            f"the model has attention layers {sorted(layer_types)}; the scorer supports full attention only"
        )
    for name in ("final_logit_softcapping", "logit_scale"):
        if getattr(config, name, None) not in (None, 1.0):
            raise ValueError(
                f"the model's config sets {name}; the scorer reads logits straight from the LM head"
            )
    lm_head = model.get_output_embeddings()
    if lm_head is None:
        raise ValueError(f"{type(model).__name__} has no LM head: give a causal LM (AutoModelForCausalLM)")
    return model.get_decoder(), lm_head


def _score_batch(
    decoder: nn.Module,
    lm_head: nn.Module,
    trajectories: list[CheckedTrajectory],
    run_lengths: list[int],
    probe: list[int],
    *,
    alias_beliefs: list[list[list[float]]],
    token_log_probs: list[torch.Tensor] | None,
    temperature: float,
    token_budget: int,
    logits_chunk: int,
) -> None:
    """Scores one batch in place: the trajectory pass (and its token log-probs), then the probe rounds.

    Each block's answer-token log-probs are collected (a_1 from the trajectory pass when the probe is empty,
    the rest from the probe rounds), then reduced to its log b, appended in alias order.
    """
    rows_of_blocks = [
        [
            ProbeBlock(row=b, point=k, alias=m, position=p, answer=alias)
            for k, p in enumerate(t.points)
            for m, alias in enumerate(t.aliases)
        ]
        for b, t in enumerate(trajectories)
    ]
    blocks = [block for row in rows_of_blocks for block in row]
    # empty probe: log π(a_1 | ids[:p]) is read from the hidden state of ids[p-1] in the trajectory pass
    heads = [] if probe else [(block.row, block.position - 1, block.answer[0]) for block in blocks]
    cache, head_log_probs = _trajectory_pass(
        decoder,
        lm_head,
        trajectories,
        run_lengths,
        token_log_probs=token_log_probs,
        heads=heads,
        temperature=temperature,
        token_budget=token_budget,
        logits_chunk=logits_chunk,
    )
    pieces: dict[tuple[int, int, int], list[torch.Tensor]] = {
        (block.row, block.point, block.alias): [] if probe else [head_log_probs[i : i + 1]]
        for i, block in enumerate(blocks)
    }
    for probe_round in probe_rounds(
        rows_of_blocks, probe, row_budget=max(1, token_budget // len(trajectories))
    ):
        for block, log_probs in _probe_pass(decoder, lm_head, cache, probe_round, probe, logits_chunk):
            pieces[(block.row, block.point, block.alias)].append(log_probs)
    for block in blocks:
        log_probs = torch.cat(pieces[(block.row, block.point, block.alias)])
        alias_beliefs[block.row][block.point].append(log_belief(log_probs))


def _trajectory_pass(
    decoder: nn.Module,
    lm_head: nn.Module,
    trajectories: list[CheckedTrajectory],
    run_lengths: list[int],
    *,
    token_log_probs: list[torch.Tensor] | None,
    heads: list[tuple[int, int, int]],
    temperature: float,
    token_budget: int,
    logits_chunk: int,
) -> tuple[DynamicCache, torch.Tensor]:
    """One causal pass over the right-padded batch [B, W]; fills token_log_probs in place and returns the KV
    cache and, for each (row, position, target) of `heads`, log π(target | ids[:position + 1]) at temperature
    1 ([len(heads)] float32, the first answer token of an empty-probe block).

    Runs in chunks of at most token_budget padded tokens (one chunk unless a single trajectory exceeds the
    budget). The first chunk passes no mask, so sdpa applies causality itself (no W x W mask); a later chunk
    sees the whole cache and itself causally.
    """
    device, dtype = lm_head.weight.device, lm_head.weight.dtype
    n_rows, width = len(trajectories), max(run_lengths)
    input_ids = torch.zeros(n_rows, width, dtype=torch.long)  # [B, W] right-padded with id 0
    target_ids = torch.zeros(n_rows, width, dtype=torch.long)  # [B, W] target_ids[b, t] = ids[t + 1]
    wanted = torch.zeros(n_rows, width, dtype=torch.bool)  # [B, W] hidden state t predicts a wanted log-prob
    for b, (t, n) in enumerate(zip(trajectories, run_lengths, strict=True)):
        input_ids[b, :n] = t.ids[:n]
        if token_log_probs is not None:
            n_targets = len(t.ids) - 1
            target_ids[b, :n_targets] = t.ids[1:]
            wanted[b, :n_targets] = True if t.action_mask is None else t.action_mask[1:]

    head_rows = torch.tensor([h[0] for h in heads], dtype=torch.long)  # [K]
    head_cols = torch.tensor([h[1] for h in heads], dtype=torch.long)  # [K] hidden state ids[p-1]
    head_targets = torch.tensor([h[2] for h in heads], dtype=torch.long)  # [K] a_1
    head_log_probs = torch.zeros(len(heads), dtype=torch.float32)

    cache = DynamicCache(config=decoder.config)
    chunk = max(1, token_budget // n_rows)
    for start in range(0, width, chunk):
        end = min(width, start + chunk)
        mask = None
        if start > 0:
            cache_limit = torch.full((n_rows, end - start), start, device=device)
            mask = block_attention_mask(cache_limit, torch.zeros_like(cache_limit), start, dtype)
        hidden = decoder(
            input_ids=input_ids[:, start:end].to(device),
            position_ids=torch.arange(start, end, device=device).expand(n_rows, -1),
            attention_mask=mask,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state  # [B, C, H]
        if token_log_probs is not None:
            rows, cols = wanted[:, start:end].nonzero(as_tuple=True)  # hidden state at start + col
            log_probs = _log_probs(
                lm_head,
                hidden[rows.to(device), cols.to(device)],
                target_ids[rows, start + cols],
                temperature,
                logits_chunk,
            ).cpu()
            for b in range(n_rows):
                of_row = rows == b
                token_log_probs[b][start + cols[of_row] + 1] = log_probs[of_row]
        in_chunk = ((head_cols >= start) & (head_cols < end)).nonzero(as_tuple=True)[0]
        if len(in_chunk):
            head_log_probs[in_chunk] = _log_probs(
                lm_head,
                hidden[head_rows[in_chunk].to(device), (head_cols[in_chunk] - start).to(device)],
                head_targets[in_chunk],
                1.0,  # beliefs are the policy's own probabilities
                logits_chunk,
            ).cpu()
    return cache, head_log_probs


def _probe_pass(
    decoder: nn.Module,
    lm_head: nn.Module,
    cache: DynamicCache,
    probe_round: ProbeRound,
    probe: list[int],
    logits_chunk: int,
) -> list[tuple[ProbeBlock, torch.Tensor]]:
    """The round's probe blocks in one forward against the trajectory cache [B, *, W, *]; for each block, the
    log-probs of the answer tokens its queries predict (all of them, or a_2.. with an empty probe)."""
    device, dtype = lm_head.weight.device, lm_head.weight.dtype
    width = cache.get_seq_length()
    mask = block_attention_mask(
        probe_round.cache_limit.to(device), probe_round.block_start.to(device), width, dtype
    )  # [B, 1, Q, W + Q]
    hidden = decoder(
        input_ids=probe_round.input_ids.to(device),
        position_ids=probe_round.position_ids.to(device),
        attention_mask=mask,
        past_key_values=cache,
        use_cache=True,
    ).last_hidden_state  # [B, Q, H]
    cache.crop(-probe_round.input_ids.shape[1])  # forget the probe tokens: the next round sees the trajectory
    answer_log_probs = _log_probs(
        lm_head,
        hidden[probe_round.answer_rows.to(device), probe_round.answer_cols.to(device)],
        probe_round.answer_ids,
        1.0,  # beliefs are the policy's own probabilities
        logits_chunk,
    ).cpu()  # [N] log π(a_j | ids[:p], probe, a_<j)
    # answer tokens are laid out block after block, so each block's log-probs are one contiguous slice
    per_block = answer_log_probs.split([answer_tokens_in_block(b, probe) for b in probe_round.blocks])
    return list(zip(probe_round.blocks, per_block, strict=True))


def _log_probs(
    lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float, logits_chunk: int
) -> torch.Tensor:
    """[N] float32 log-softmax(lm_head(hidden) / temperature)[target], projecting logits_chunk rows at a time.

    hidden: [N, H]; targets: [N] token ids. Logits are upcast to float32 before the softmax.
    """
    targets = targets.to(hidden.device)
    out = []
    for start in range(0, len(hidden), logits_chunk):
        logits = lm_head(hidden[start : start + logits_chunk]).float()  # [n, V]
        if temperature != 1.0:
            logits = logits / temperature
        picked = logits.gather(-1, targets[start : start + logits_chunk, None]).squeeze(-1)
        out.append(picked - logits.logsumexp(-1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float32, device=hidden.device)

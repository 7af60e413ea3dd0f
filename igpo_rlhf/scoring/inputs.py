"""The scorer's inputs, checked once: every error names the trajectory and what would be accepted."""

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from igpo_rlhf.algo.belief import ALIAS_REDUCTIONS

# One trajectory's token ids (or an action mask): a list of ints or a 1-D integer tensor.
TokenIds = Sequence[int] | torch.Tensor


@dataclass(frozen=True)
class CheckedTrajectory:
    """One trajectory, checked: ids inside the vocabulary, every belief point p in 1..len(ids)."""

    ids: torch.Tensor  # [L] int64, the token ids as sampled (prompt + every turn), no padding
    points: list[int]  # belief points p: b_{i,t} is measured on ids[:p] + probe + answer
    aliases: list[list[int]]  # gold aliases to score (only the first one when alias_reduce="first")
    action_mask: torch.Tensor | None  # [L] bool, True where the token log-prob is wanted; None: every token


def check_inputs(
    sequences: Sequence[TokenIds],
    belief_points: Sequence[Sequence[int]],
    probe_ids: TokenIds,
    answers: Sequence[Sequence[TokenIds]] | None,
    action_masks: Sequence[TokenIds] | None,
    *,
    vocab_size: int,
    alias_reduce: str,
) -> tuple[list[CheckedTrajectory], list[int]]:
    """Checks every input of the scorer; returns the trajectories and the probe ids as plain ints.

    Raises ValueError naming the offending trajectory (`sequences[i]`, `belief_points[i]`, ...) and what is
    accepted. A trajectory without belief points needs no answer (GRPO and PPO runs pass `answers=None`).
    """
    if alias_reduce not in ALIAS_REDUCTIONS:
        raise ValueError(f"alias_reduce={alias_reduce!r} is not one of {ALIAS_REDUCTIONS}")
    n = len(sequences)
    _check_count("belief_points", belief_points, n)
    if answers is not None:
        _check_count("answers", answers, n)
    if action_masks is not None:
        _check_count("action_masks", action_masks, n)
    probe = _as_ids(probe_ids, "probe_ids", vocab_size).tolist()

    trajectories = []
    for i in range(n):
        ids = _as_ids(sequences[i], f"sequences[{i}]", vocab_size)
        if ids.numel() == 0:
            raise ValueError(f"sequences[{i}] is empty: a trajectory needs at least one token")
        points = _check_points(belief_points[i], i, len(ids))
        aliases = [
            _as_ids(alias, f"answers[{i}][{m}]", vocab_size).tolist()
            for m, alias in enumerate([] if answers is None or answers[i] is None else answers[i])
        ]
        if points and not aliases:
            raise ValueError(
                f"answers[{i}] has no gold alias but belief_points[{i}] asks for {len(points)} beliefs: "
                "give at least one alias (a non-empty list of token ids)"
            )
        for m, alias in enumerate(aliases):
            if not alias:
                raise ValueError(f"answers[{i}][{m}] is empty: a gold alias needs at least one token id")
        if alias_reduce == "first":
            aliases = aliases[:1]
        mask = None
        if action_masks is not None:
            mask = _check_action_mask(action_masks[i], i, len(ids))
        trajectories.append(CheckedTrajectory(ids=ids, points=points, aliases=aliases, action_mask=mask))
    return trajectories, probe


def _check_count(name: str, values: Sequence, n: int) -> None:
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries but sequences has {n}: give one per trajectory")


def _as_ids(value: TokenIds, name: str, vocab_size: int) -> torch.Tensor:
    """[L] int64 ids from a list of ints or a 1-D integer tensor, each in [0, vocab_size)."""
    try:
        ids = torch.as_tensor(value) if len(value) else torch.zeros(0, dtype=torch.long)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{name} must be a flat list of integer token ids ({error})") from None
    if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(
            f"{name} must be a flat list of integer token ids, got dtype {ids.dtype}, shape {tuple(ids.shape)}"
        )
    ids = ids.to(device="cpu", dtype=torch.long)
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        j = int(bad.nonzero()[0])
        raise ValueError(
            f"{name} holds token id {int(ids[j])} at index {j}, outside the model's vocabulary [0, {vocab_size})"
        )
    return ids


def _check_points(points: Sequence[int], i: int, length: int) -> list[int]:
    checked = []
    for p in points:
        try:
            if isinstance(p, bool):
                raise TypeError
            p = operator.index(p)  # int, numpy integer or 0-d integer tensor
        except TypeError:
            raise ValueError(f"belief_points[{i}] holds {p!r}: belief points must be integers") from None
        if not 1 <= p <= length:
            raise ValueError(
                f"belief_points[{i}] holds {p}, outside 1..{length} (len(sequences[{i}])): "
                "a belief point p scores the context sequences[i][:p]"
            )
        checked.append(p)
    return checked


def _check_action_mask(mask: TokenIds, i: int, length: int) -> torch.Tensor:
    try:
        mask = torch.as_tensor(mask) if len(mask) else torch.zeros(0, dtype=torch.bool)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"action_masks[{i}] must be a flat list of 0/1 entries ({error})") from None
    if mask.dim() != 1 or len(mask) != length:
        raise ValueError(
            f"action_masks[{i}] has shape {tuple(mask.shape)} but sequences[{i}] has {length} tokens: "
            "give one 0/1 entry per token"
        )
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"action_masks[{i}] holds values other than 0 and 1")
    return mask.to(device="cpu", dtype=torch.bool)

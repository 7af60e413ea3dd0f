"""How the scorer splits its work: trajectories into batches, probe blocks into rounds, within a token budget."""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


def batches_within_budget(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Indices of trajectories grouped so that rows × longest row <= token_budget, longest first.

    This bounds the padded tokens of each forward pass and the KV cache a batch keeps. A trajectory longer than
    the budget forms a batch of its own; its pass is then split into chunks of token_budget tokens.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        # rows are added longest first, so the first row of a batch is its longest
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= token_budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@dataclass(frozen=True)
class ProbeBlock:
    """One probe block: probe + answer[:-1] for one (trajectory row, belief point, alias).

    Its query tokens sit at positions p, p+1, ... (continuing the prefix ids[:p]); the token at probe index
    len(probe)-1+j predicts answer token a_{j+1}. With an empty probe the block is answer[:-1] alone: a_1 is
    predicted by the context's last token ids[p-1] (the trajectory pass), and block token j predicts a_{j+2}.
    """

    row: int  # row of the batch (its KV cache row)
    point: int  # index k of the belief point in belief_points[i]
    alias: int  # index m of the alias in answers[i]
    position: int  # the belief point p itself
    answer: list[int]  # the alias's token ids a_1..a_A


@dataclass(frozen=True)
class ProbeRound:
    """One forward pass of probe blocks against the batch's KV cache; every row holds Q query tokens."""

    blocks: list[ProbeBlock]
    input_ids: torch.Tensor  # [B, Q] probe + answer[:-1] of each block, blocks back to back, right-padded
    position_ids: torch.Tensor  # [B, Q] p, p+1, ... within each block; 0 on padding
    cache_limit: torch.Tensor  # [B, Q] cached tokens visible to each query: p (0 on padding)
    block_start: torch.Tensor  # [B, Q] first query index of each query's block (itself on padding)
    answer_rows: torch.Tensor  # [N] row of each query whose next-token prediction is an answer token
    answer_cols: torch.Tensor  # [N] its query index
    answer_ids: torch.Tensor  # [N] the answer token it predicts; block after block, in `blocks` order


def probe_rounds(
    rows: Sequence[Sequence[ProbeBlock]], probe_ids: Sequence[int], row_budget: int
) -> Iterator[ProbeRound]:
    """Lays the probe blocks of each row out in rounds of at most row_budget query tokens per row.

    A block is never split (a row takes at least one block per round even if it alone exceeds row_budget).
    Blocks without query tokens (empty probe, one-token answer: everything comes from the trajectory pass)
    are left out.
    """
    queues = [[b for b in blocks if block_len(b, probe_ids) > 0] for blocks in rows]
    while any(queues):
        taken = []
        for queue in queues:
            row_blocks, used = [], 0
            while queue and (not row_blocks or used + block_len(queue[0], probe_ids) <= row_budget):
                used += block_len(queue[0], probe_ids)
                row_blocks.append(queue.pop(0))
            taken.append(row_blocks)
        yield _lay_out(taken, probe_ids)


def block_len(block: ProbeBlock, probe_ids: Sequence[int]) -> int:
    """Query tokens of the block: probe + answer[:-1]."""
    return len(probe_ids) + len(block.answer) - 1


def answer_tokens_in_block(block: ProbeBlock, probe_ids: Sequence[int]) -> int:
    """Answer tokens the probe pass predicts for the block: all of them, or all but a_1 when the probe is
    empty (a_1 then comes from the trajectory pass)."""
    return len(block.answer) - (0 if probe_ids else 1)


def _lay_out(taken: list[list[ProbeBlock]], probe_ids: Sequence[int]) -> ProbeRound:
    n_rows = len(taken)
    width = max(1, max(sum(block_len(b, probe_ids) for b in row) for row in taken))
    input_ids = torch.zeros(n_rows, width, dtype=torch.long)
    position_ids = torch.zeros(n_rows, width, dtype=torch.long)
    cache_limit = torch.zeros(n_rows, width, dtype=torch.long)
    block_start = torch.arange(width).repeat(n_rows, 1)  # padding sees only itself
    blocks: list[ProbeBlock] = []
    answer_rows, answer_cols, answer_ids = [], [], []
    for b, row in enumerate(taken):
        start = 0
        for block in row:
            tokens = list(probe_ids) + block.answer[:-1]
            end = start + len(tokens)
            input_ids[b, start:end] = torch.tensor(tokens)
            position_ids[b, start:end] = torch.arange(block.position, block.position + len(tokens))
            cache_limit[b, start:end] = block.position
            block_start[b, start:end] = start
            # the last probe token predicts a_1; with an empty probe the block's first token (a_1) predicts a_2
            first = start + max(len(probe_ids) - 1, 0)
            predicted = block.answer[len(block.answer) - answer_tokens_in_block(block, probe_ids) :]
            answer_rows += [b] * len(predicted)
            answer_cols += range(first, first + len(predicted))
            answer_ids += predicted
            blocks.append(block)
            start = end
    return ProbeRound(
        blocks=blocks,
        input_ids=input_ids,
        position_ids=position_ids,
        cache_limit=cache_limit,
        block_start=block_start,
        answer_rows=torch.tensor(answer_rows, dtype=torch.long),
        answer_cols=torch.tensor(answer_cols, dtype=torch.long),
        answer_ids=torch.tensor(answer_ids, dtype=torch.long),
    )

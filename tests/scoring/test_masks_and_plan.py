"""The probe mask, the batching and the probe block layout, against small cases worked out by hand."""

import torch

from igpo_rlhf.scoring import block_attention_mask
from igpo_rlhf.scoring.plan import ProbeBlock, batches_within_budget, probe_rounds


def test_probe_mask_sees_the_prefix_and_its_own_block_only():
    # A cache of 5 tokens; row 0 holds a 2-token block for belief point p=3, then a 1-token block for p=5;
    # row 1 holds one 2-token block for p=1 and a padding query.
    cache_limit = torch.tensor([[3, 3, 5], [1, 1, 0]])
    block_start = torch.tensor([[0, 0, 2], [0, 0, 2]])
    mask = block_attention_mask(cache_limit, block_start, cache_len=5, dtype=torch.float32)
    assert mask.shape == (2, 1, 3, 8)  # [B, 1, Q, cache_len + Q]
    # columns: cache 0..4 | new 0..2 (1 = visible)
    expected = torch.tensor(
        [
            [
                [1, 1, 1, 0, 0, 1, 0, 0],  # p=3 block, first token: ids[:3] and itself
                [1, 1, 1, 0, 0, 1, 1, 0],  # its second token: ids[:3], the first and itself
                [1, 1, 1, 1, 1, 0, 0, 1],  # p=5 block: the whole cache and itself, not the other block
            ],
            [
                [1, 0, 0, 0, 0, 1, 0, 0],  # p=1 block
                [1, 0, 0, 0, 0, 1, 1, 0],
                [0, 0, 0, 0, 0, 0, 0, 1],  # padding sees only itself (no fully masked row, no NaN)
            ],
        ]
    )
    assert torch.equal(mask[:, 0] == 0, expected.bool())
    assert (mask[:, 0][expected == 0] == torch.finfo(torch.float32).min).all()


def test_probe_mask_takes_the_model_dtype():
    mask = block_attention_mask(torch.tensor([[1]]), torch.tensor([[0]]), 2, torch.bfloat16)
    assert mask.dtype == torch.bfloat16
    assert mask[0, 0].tolist() == [[0.0, torch.finfo(torch.bfloat16).min, 0.0]]


def test_batches_fill_rows_times_longest_up_to_the_budget():
    lengths = [10, 40, 25, 40, 5, 100]
    # longest first: 100 alone (2 x 100 > 100); 40, 40 (3 x 40 > 100); 25, 10, 5 (3 x 25 = 75 <= 100)
    assert batches_within_budget(lengths, token_budget=100) == [[5], [1, 3], [2, 0, 4]]
    # a trajectory longer than the budget forms a batch of its own
    assert batches_within_budget([300, 2], token_budget=100) == [[0], [1]]


def test_probe_blocks_are_laid_out_back_to_back_with_continuing_positions():
    probe = [7, 8]
    rows = [
        [ProbeBlock(row=0, point=0, alias=0, position=4, answer=[50, 51, 52])],
        [
            ProbeBlock(row=1, point=0, alias=0, position=2, answer=[60]),
            ProbeBlock(row=1, point=1, alias=0, position=6, answer=[61, 62]),
        ],
    ]
    (layout,) = probe_rounds(rows, probe, row_budget=100)
    # row 0: probe + answer[:-1] = 7 8 50 51 at positions 4..7; row 1: 7 8 | 7 8 61, then nothing
    assert layout.input_ids.tolist() == [[7, 8, 50, 51, 0], [7, 8, 7, 8, 61]]
    assert layout.position_ids.tolist() == [[4, 5, 6, 7, 0], [2, 3, 6, 7, 8]]
    assert layout.cache_limit.tolist() == [[4, 4, 4, 4, 0], [2, 2, 6, 6, 6]]
    assert layout.block_start.tolist() == [[0, 0, 0, 0, 4], [0, 0, 2, 2, 2]]
    # the last probe token predicts a_1: query 1 -> 50, 2 -> 51, 3 -> 52; row 1: 1 -> 60; 3 -> 61, 4 -> 62
    answers = zip(
        layout.answer_rows.tolist(), layout.answer_cols.tolist(), layout.answer_ids.tolist(), strict=True
    )
    assert list(answers) == [
        (0, 1, 50),
        (0, 2, 51),
        (0, 3, 52),
        (1, 1, 60),
        (1, 3, 61),
        (1, 4, 62),
    ]
    # answer tokens come block after block, in `blocks` order (the scorer slices each block's run)
    assert [len(b.answer) for b in layout.blocks] == [3, 1, 2]


def test_probe_rounds_respect_the_row_budget_but_never_split_a_block():
    probe = [7]
    blocks = [
        ProbeBlock(row=0, point=k, alias=0, position=1, answer=[1, 2, 3]) for k in range(3)
    ]  # 3 tokens each
    rounds = list(probe_rounds([blocks], probe, row_budget=7))
    assert [[b.point for b in r.blocks] for r in rounds] == [[0, 1], [2]]  # 3 + 3 <= 7 < 9
    rounds = list(probe_rounds([blocks], probe, row_budget=2))
    assert [r.input_ids.shape for r in rounds] == [(1, 3)] * 3  # one 3-token block per round, over budget

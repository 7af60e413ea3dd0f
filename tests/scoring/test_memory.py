"""Memory stays linear in the context length: nothing of size L x L is ever allocated or handed to attention.

Two independent checks on a 4096-token trajectory: torch.profiler's record of every allocation the scorer makes
(the largest must stay far below L² bytes, the size of even a boolean L x L mask), with a control showing the
same check catches the one-pass dense-mask design; and forward hooks on the attention layers recording the masks
the model receives.
"""

import random

import torch
from torch.profiler import ProfilerActivity, profile

from igpo_rlhf.scoring import score_trajectories
from tests.scoring.tiny_models import VOCAB, tiny_model

L = 4096
PROBE = [7, 8, 9]
ANSWER = [1, 2, 3, 4, 5, 6, 7, 8]
POINTS = [819, 1638, 2457, 3276, 4096]  # five belief points, the last at the end


def trajectory() -> list[int]:
    rng = random.Random(0)
    return [rng.randrange(VOCAB) for _ in range(L)]


def largest_allocation(fn) -> int:
    """Bytes of the largest allocation any single torch op made while fn ran (its self memory)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max(event.self_cpu_memory_usage for event in prof.events())


def dense_one_pass(model, ids: list[int]) -> None:
    """The design we did not take: trajectory and every probe block in one pass under a dense N x N mask."""
    tokens = ids + (PROBE + ANSWER[:-1]) * len(POINTS)
    n = len(tokens)
    hidden = ~torch.ones(n, n, dtype=torch.bool).tril()  # (the block structure does not matter for memory)
    mask = torch.zeros(1, 1, n, n).masked_fill_(hidden, torch.finfo(torch.float32).min)
    with torch.inference_mode():
        model(
            torch.tensor([tokens]), attention_mask=mask, position_ids=torch.arange(n)[None], logits_to_keep=1
        )


def test_no_allocation_grows_with_the_square_of_the_context():
    model = tiny_model("qwen2")
    ids = trajectory()
    ours = largest_allocation(lambda: score_trajectories(model, [ids], [POINTS], PROBE, [[ANSWER]]))
    dense = largest_allocation(lambda: dense_one_pass(model, ids))
    assert dense >= L * L  # the check sees an N x N mask (float32: 4 (L + 50)² bytes)
    # ours: the largest tensors are [L, 128] MLP activations and [1024, 300] logit chunks, ~2 MB, vs 16.8 MB
    assert ours < L * L / 4, f"largest allocation {ours} bytes"


def test_attention_sees_no_mask_in_the_trajectory_pass_and_a_rectangular_one_in_the_probe_pass():
    model = tiny_model("llama")
    masks = []  # per attention call: the shape of the mask it received, or None
    hooks = [
        layer.self_attn.register_forward_pre_hook(
            lambda module, args, kwargs: masks.append(
                None if kwargs["attention_mask"] is None else tuple(kwargs["attention_mask"].shape)
            ),
            with_kwargs=True,
        )
        for layer in model.get_decoder().layers
    ]
    try:
        score_trajectories(model, [trajectory()], [POINTS], PROBE, [[ANSWER]])
    finally:
        for hook in hooks:
            hook.remove()
    n_layers = len(model.get_decoder().layers)
    q = len(POINTS) * (len(PROBE) + len(ANSWER) - 1)  # 5 blocks of probe + answer[:-1] = 50 query tokens
    # trajectory pass: no mask, sdpa applies causality itself; probe pass: [B, 1, Q, L + Q]
    assert masks == [None] * n_layers + [(1, 1, q, L + q)] * n_layers

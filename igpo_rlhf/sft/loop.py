"""The supervised pass on demonstrations that warm-starts a policy: the loss covers only the tokens the policy
generates (thinking, search calls, the answer and the EOS closing it), never the prompt or observations.

A demonstration is tokenised segment by segment exactly as the rollout loop builds a trajectory
(`igpo_rlhf.sft.demos.demo_token_segments`): prompt ids, each turn's text encoded on its own, each
observation from `protocol.observation_ids`. The tiny demo model (`igpo make-tiny-model`) and `igpo sft` share
this loop.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator

import torch

from igpo_rlhf.sft.demos import demo_token_segments

Example = tuple[list[int], list[int]]  # token ids [T], labels [T] (-100: not trained on)


def encode_demo(demo: dict, protocol, tokenizer, max_obs_tokens: int | None) -> Example:
    """Token ids [T] and labels [T] of one demo: labels are -100 except on the generated turns' tokens.

    The ids are `demo_token_segments` (each segment tokenised on its own, as the rollout loop appends
    them) followed by EOS, which closes the answer turn and is trained on."""
    ids: list[int] = []
    labels: list[int] = []
    for kind, part in demo_token_segments(demo, protocol, tokenizer, max_obs_tokens):
        ids += part
        labels += part if kind == "turn" else [-100] * len(part)
    ids.append(tokenizer.eos_token_id)
    labels.append(tokenizer.eos_token_id)
    return ids, labels


def batches(
    examples: list[Example], batch_size: int, steps: int, seed: int, pad_id: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`steps` batches of right-padded ids [B, T], labels [B, T], attention mask [B, T].

    Each epoch is a seeded shuffle; within windows of 8 batches examples are grouped by length, so little
    compute goes to padding (1- and 3-hop demonstrations differ in length by 2x)."""
    rng = random.Random(seed)
    queue: list[list[int]] = []
    for _ in range(steps):
        if not queue:
            epoch = list(range(len(examples)))
            rng.shuffle(epoch)
            window = 8 * batch_size
            for start in range(0, len(epoch), window):
                chunk = sorted(epoch[start : start + window], key=lambda i: len(examples[i][0]))
                queue += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
            rng.shuffle(queue)
        idx = queue.pop()
        width = max(len(examples[i][0]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        labels = torch.full((len(idx), width), -100, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            x, y = examples[i]
            ids[row, : len(x)] = torch.tensor(x)
            labels[row, : len(y)] = torch.tensor(y)
            mask[row, : len(x)] = 1
        yield ids, labels, mask


def supervised_train(
    model: torch.nn.Module,
    examples: list[Example],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup: int,
    seed: int,
    pad_id: int,
    log_every: int,
    after_step: Callable[[int], None] | None = None,
) -> list[float]:
    """AdamW on the demonstrations' generated tokens (linear warmup, cosine decay to 10%); the loss per step.

    `after_step(k)` runs after optimiser step k (1-based), e.g. to measure the model mid-way; it may switch
    the model to eval mode, the loop switches it back. The model is left in eval mode."""
    if not examples:
        raise ValueError("no demonstrations to train on")
    torch.manual_seed(seed)
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_at)
    model.train()
    losses, t0 = [], time.time()
    for step, (ids, labels, mask) in enumerate(batches(examples, batch_size, steps, seed, pad_id)):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            recent = losses[-log_every:]
            print(
                f"  step {step + 1:4d}/{steps}  loss {sum(recent) / len(recent):.3f}  ({time.time() - t0:.0f}s)",
                flush=True,
            )
        if after_step is not None:
            after_step(step + 1)
            model.train()
    model.eval()
    return losses

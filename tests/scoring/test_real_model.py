"""The belief scorer on the real pretrained model (SmolLM2-135M, Llama architecture, 49k vocabulary) and real
text: HotpotQA questions, the search_r1 protocol's prompt and turns, BM25 passages from the shipped corpus.
Expected values are the slow obvious per-point passes of tests/scoring/naive.py.

Tolerances (nats), measured on these trajectories:
- float32: 1e-4 on every belief and token log-prob (measured: at most 6e-6 and 1.9e-5). A probe block one
  position off moves a belief on this model by 0.003 to 0.11, so float32 catches it
  (test_a_position_error_is_larger_than_the_float32_tolerance).
- bfloat16: 0.1 on each belief, 0.25 on each token log-prob, and means of 0.03 / 0.02 (measured here: at most
  0.023 and 0.15, means 0.011 and 0.008; with three questions and three aliases at most 0.048 on a belief).
  The one-pass and per-point computations round differently in 8 mantissa bits over 30 layers; each is that
  far from float32 too. At this precision a one-position RoPE error on this model is within the rounding
  noise: positions are checked in float32.
"""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from igpo_rlhf.data.datasets import read_file
from igpo_rlhf.models.loading import load_causal_lm, load_tokenizer
from igpo_rlhf.rollout.protocols import SearchR1Protocol
from igpo_rlhf.scoring import score_trajectories
from igpo_rlhf.scoring.probe import alias_token_ids, probe_token_ids
from igpo_rlhf.world.demos import BM25Search
from tests.models.smollm2 import CORPUS, HOTPOTQA, smollm2_dir
from tests.scoring.naive import naive_belief, naive_beliefs, naive_token_log_probs

pytestmark = pytest.mark.real_model

# (each belief, each token log-prob, mean belief, mean token log-prob)
TOLERANCE = {torch.float32: (1e-4, 1e-4, 1e-4, 1e-4), torch.bfloat16: (0.1, 0.25, 0.03, 0.02)}
PROMPT = "Answer the question. Search with <search> query </search>, answer with <answer> answer </answer>. Question: {question}\n"  # fmt: skip


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(smollm2_dir())


@pytest.fixture(scope="module")
def batch(tok):
    """Two real trajectories (prompt, search turn, BM25 observation, answer turn) with belief points after the
    prompt, after the observation and at the end; gold aliases plus one wrong alias; action masks."""
    protocol = SearchR1Protocol(tok, prompt_template=PROMPT, observation_template="\n<information>{documents}</information>\n",
                                document_template="Doc {rank}(Title: {title}) {text}\n", answer_probe="<answer>")  # fmt: skip
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        search = BM25Search([json.loads(line) for line in f])
    sequences, points, answers, masks = [], [], [], []
    for item in read_file(HOTPOTQA)[:2]:
        turn1 = tok.encode(
            protocol.demo_turn_text(think="I should search.", queries=[item.question]),
            add_special_tokens=False,
        )
        obs = protocol.observation_ids(
            search.search([item.question], 2), max_tokens=160, queries=[item.question]
        )
        turn2 = tok.encode(
            protocol.demo_turn_text(think="Found it.", answer=item.golds[0]), add_special_tokens=False
        )
        prompt = protocol.prompt_ids(item.question)
        ids = prompt + turn1 + obs + turn2
        sequences.append(ids)
        points.append([len(prompt), len(prompt) + len(turn1) + len(obs), len(ids)])
        answers.append(alias_token_ids(tok, "<answer>", [item.golds[0], "Paris"]))
        masks.append([0] * len(prompt) + [1] * len(turn1) + [0] * len(obs) + [1] * len(turn2))
    return sequences, points, probe_token_ids(tok, "<answer>"), answers, masks


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_scorer_equals_per_point_passes_on_the_real_model(batch, dtype):
    model = load_causal_lm(smollm2_dir(), dtype=dtype)
    sequences, points, probe, answers, masks = batch
    result = score_trajectories(model, sequences, points, probe, answers, action_masks=masks)
    expected = naive_beliefs(model, sequences, points, probe, answers)
    each, each_token, mean, mean_token = TOLERANCE[model.dtype]
    diffs = [
        abs(g - w)
        for got, want in zip(result.beliefs, expected, strict=True)
        for g, w in zip(got, want, strict=True)
    ]
    assert len(diffs) == 6 and max(diffs) <= each and sum(diffs) / len(diffs) <= mean, diffs
    token_diffs = []
    for i, ids in enumerate(sequences):
        want = naive_token_log_probs(model, ids, action_mask=masks[i])
        torch.testing.assert_close(result.token_log_probs[i], want, atol=each_token, rtol=0)
        token_diffs.append((result.token_log_probs[i] - want).abs()[torch.tensor(masks[i], dtype=torch.bool)])
    assert torch.cat(token_diffs).mean().item() <= mean_token
    # the beliefs are real numbers of a real model: after the answer turn the gold is far likelier than at the start
    assert all(row[2] > row[0] for row in result.beliefs)


@torch.no_grad()
def test_a_position_error_is_larger_than_the_float32_tolerance(batch):
    model = load_causal_lm(smollm2_dir())
    sequences, points, probe, answers, _ = batch
    for ids, row, aliases in zip(sequences, points, answers, strict=True):
        p, alias = row[1], aliases[0]  # after the observation
        tokens = torch.tensor([ids[:p] + probe + alias])
        shifted = torch.arange(tokens.shape[1])[None].clone()
        shifted[0, p:] += 1  # the probe block one position too far
        log_probs = model(tokens, position_ids=shifted).logits[0].float().log_softmax(-1)
        start = p + len(probe) - 1
        wrong = sum(log_probs[start + j, alias[j]].item() for j in range(len(alias))) / len(alias)
        assert abs(wrong - naive_belief(model, ids, p, probe, alias)) > 10 * TOLERANCE[torch.float32][0]

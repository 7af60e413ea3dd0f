"""`action_log_probs` (the policy's training pass) against the plain path over full logits [B, L, V].

- Equal log-probs, entropies, losses and gradients (float32, 1e-5) for several chunk sizes and temperatures,
  with the entropy as a bonus (gradient) and as a metric (none).
- Which tensors exist: the peak of live CPU memory during forward + backward, from torch.profiler's
  allocation records, on a tiny model with a big vocabulary. The plain path holds [B, L, V] float32 logits
  (and their log-softmax); the chunked path never more than a few [chunk, V] at once.
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from transformers import Qwen2Config, Qwen2ForCausalLM

from igpo_rlhf.algo import masked_aggregate, policy_loss
from igpo_rlhf.training.logprobs import action_log_probs, token_entropy, token_log_probs


def tiny_model(vocab: int, hidden: int = 32, layers: int = 2) -> Qwen2ForCausalLM:
    config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=False, attn_implementation="sdpa")  # fmt: skip
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).float()


def batch(vocab: int, rows: int = 3, width: int = 17, seed: int = 1):
    """Right-padded ids, attention mask and an action mask with gaps (prompt, observations, padding out)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, width), generator=g)
    lengths = [width, width - 5, width - 9][:rows]
    attention = torch.zeros(rows, width, dtype=torch.long)
    actions = torch.zeros(rows, width, dtype=torch.bool)
    for b, n in enumerate(lengths):
        attention[b, :n] = 1
        actions[b, 3:n] = torch.rand(n - 3, generator=g) > 0.3
    return ids, attention, actions


def loss_of(log_probs, entropy, actions, advantages):
    loss, _ = policy_loss(log_probs, log_probs.detach() - 0.1, advantages, actions, entropy=entropy,
                          entropy_coef=0.01)  # fmt: skip
    return loss + 0.1 * masked_aggregate(log_probs**2, actions)


@pytest.mark.parametrize("chunk", [1, 5, 10_000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_equal_to_the_plain_path_in_values_and_gradients(chunk, temperature):
    vocab = 97
    model = tiny_model(vocab)
    ids, attention, actions = batch(vocab)
    advantages = torch.randn(ids.shape, generator=torch.Generator().manual_seed(2))

    # the plain path: full logits, log-softmax, entropy over [B, L, V]
    out = model(input_ids=ids, attention_mask=attention)
    plain_lp = token_log_probs(out.logits, ids, temperature=temperature) * actions
    plain_ent = token_entropy(out.logits, ids, temperature=temperature) * actions
    loss_of(plain_lp, plain_ent, actions, advantages).backward()
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    hidden = model(input_ids=ids, attention_mask=attention, output_hidden_states=True, logits_to_keep=1)
    scored = action_log_probs(model.lm_head, hidden.hidden_states[-1], ids, actions, temperature=temperature,
                              logits_chunk=chunk, entropy="grad")  # fmt: skip
    torch.testing.assert_close(scored.log_probs, plain_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(scored.entropy, plain_ent, atol=1e-5, rtol=0)
    assert (scored.log_probs[~actions] == 0).all() and (scored.log_probs[actions] < 0).all()
    loss = loss_of(scored.log_probs, scored.entropy, actions, advantages)
    loss.backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, plain_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    assert plain_grads["lm_head.weight"].abs().sum() > 0  # the loss reaches every parameter


def test_entropy_as_a_metric_has_no_gradient_and_none_skips_it():
    vocab = 97
    model = tiny_model(vocab)
    ids, attention, actions = batch(vocab)
    hidden = model(input_ids=ids, attention_mask=attention, output_hidden_states=True).hidden_states[-1]
    metric = action_log_probs(model.lm_head, hidden, ids, actions, logits_chunk=4, entropy="metric")
    assert metric.log_probs.requires_grad and not metric.entropy.requires_grad
    plain = token_entropy(model.lm_head(hidden), ids) * actions
    torch.testing.assert_close(metric.entropy, plain.detach(), atol=1e-5, rtol=0)
    assert action_log_probs(model.lm_head, hidden, ids, actions, entropy="none").entropy is None
    with torch.no_grad():  # a no-grad pass (nothing to checkpoint) gives the same numbers
        torch.testing.assert_close(
            action_log_probs(model.lm_head, hidden, ids, actions, logits_chunk=3).log_probs,
            metric.log_probs.detach(), atol=1e-6, rtol=0)  # fmt: skip


def test_bad_arguments_name_themselves():
    head = torch.nn.Linear(4, 9)
    hidden, ids, mask = torch.zeros(2, 5, 4), torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 5)
    with pytest.raises(ValueError, match=r"expected \[B, L, H\], \[B, L\], \[B, L\]"):
        action_log_probs(head, hidden, ids[:, :4], mask)
    with pytest.raises(ValueError, match="logits_chunk=0 must be a positive integer"):
        action_log_probs(head, hidden, ids, mask, logits_chunk=0)
    with pytest.raises(ValueError, match="temperature=0"):
        action_log_probs(head, hidden, ids, mask, temperature=0)
    with pytest.raises(ValueError, match="entropy='yes'; accepted: none, metric, grad"):
        action_log_probs(head, hidden, ids, mask, entropy="yes")


def peak_bytes(fn) -> int:
    """Peak of the bytes allocated and not yet freed while fn runs (torch.profiler's [memory] records)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    live = peak = 0
    for record in records:
        live += record.nbytes()
        peak = max(peak, live)
    return peak


def test_peak_memory_holds_chunks_of_logits_not_the_whole_batch():
    vocab, rows, width, chunk = 50_000, 4, 96, 32
    model = tiny_model(vocab, hidden=16, layers=1)
    ids, attention, actions = batch(vocab, rows, width)
    actions[:, 3:] = attention[:, 3:].bool()  # most positions are actions, as in a long answer
    full_logits = rows * width * vocab * 4  # one [B, L, V] float32 tensor: 76.8 MB
    chunk_logits = chunk * vocab * 4  # one [chunk, V] float32 tensor: 6.4 MB
    params = sum(p.numel() * 4 for p in model.parameters())  # the weights' gradients come on top (6.4 MB)

    def plain():
        logits = model(input_ids=ids, attention_mask=attention).logits
        (token_log_probs(logits, ids) * actions).sum().backward()

    def chunked():
        out = model(input_ids=ids, attention_mask=attention, output_hidden_states=True, logits_to_keep=1)
        lp = action_log_probs(model.lm_head, out.hidden_states[-1], ids, actions, logits_chunk=chunk)
        lp.log_probs.sum().backward()

    plain_peak, chunked_peak = peak_bytes(plain), peak_bytes(chunked)
    model.zero_grad(set_to_none=True)
    assert plain_peak >= 2 * full_logits  # the logits and their log-softmax are both alive
    # a handful of chunk-sized tensors (logits, log-softmax pieces, their gradient) and the weights' gradients
    assert chunked_peak <= 6 * chunk_logits + 3 * params, (chunked_peak, chunk_logits)
    assert chunked_peak < full_logits / 2

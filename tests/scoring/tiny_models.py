"""Tiny random causal LMs built from configs (no downloads) for the scorer's tests."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

VOCAB = 300
FAMILIES = ("qwen2", "llama")


def tiny_model(family: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> PreTrainedModel:
    """2 layers, hidden 64, 4 query heads sharing 2 KV heads (GQA), vocab 300, sdpa attention.

    initializer_range=0.1 (instead of 0.02) so attention and RoPE positions visibly matter: a probe block moved
    by one position changes a belief by ~1 nat (see test_test_model_is_sensitive_to_positions).
    """
    config_class, model_class = {
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "llama": (LlamaConfig, LlamaForCausalLM),
    }[family]
    config = config_class(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        initializer_range=0.1,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    return model_class(config).to(dtype).eval()

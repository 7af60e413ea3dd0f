"""Test fixtures built locally (no downloads): a BPE tokenizer trained here, a Qwen2.5-like chat template,
a tiny random Qwen2 model.

The chat template below is written to produce Qwen2.5's tool-calling layout (system message listing the
tools in <tools></tools>, assistant tool calls in <tool_call>, tool results as a user turn in
<tool_response>), which is what the `tool_call` protocol targets.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2.5 has these as added, non-special tokens: they survive decode(skip_special_tokens=True).
TOOL_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]

QWEN25_LIKE_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}"
    "{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, '
    '\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}'
    "{%- else %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_CORPUS = [
    "Answer the given question. You must conduct reasoning inside <think> and </think> first.",
    "<search> capital of France </search> <information>Doc 1(Title: Paris) Paris is the capital.</information>",
    "<answer> Paris </answer> <answer> Beijing </answer> Question: who wrote the book?",
    'You are a helpful assistant. {"name": "search", "arguments": {"query_list": ["a", "b"]}}',
    "The quick brown fox jumps over the lazy dog. Doc 2(Title: Fox) A fox is an animal.",
    "Search failed: connection refused. No results found.",
]


def make_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on a few lines, with Qwen-style special and tool tokens and chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    fast.chat_template = QWEN25_LIKE_TEMPLATE
    return fast


def make_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0, init_std: float = 0.5) -> Qwen2ForCausalLM:
    """A random 2-layer Qwen2 (~32k parameters) over the tokenizer's vocabulary.

    Matrices are drawn with std `init_std` (default 0.5, far above the usual 0.02) so that greedy outputs
    depend on the context instead of repeating one token: batching and stopping bugs then show.
    """
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, init_std)
    return model


def save_tiny(out: Path, seed: int = 0) -> Path:
    """Tokenizer + random model saved in the standard HF layout (what RolloutActor loads)."""
    tok = make_tokenizer()
    model = make_model(tok, seed)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def warm_start(
    model: Qwen2ForCausalLM, tokenizer, segments: list[tuple[str, bool]], steps: int = 150
) -> None:
    """Overfits `model` on one demonstration (a few seconds): `segments` are (text, trained) pairs, each
    tokenised on its own as the agent loop appends them; the loss is on the trained (generated) ones."""
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in segments:
        seg = tokenizer.encode(text, add_special_tokens=False)
        ids += seg
        labels += seg if trained else [-100] * len(seg)
    x, y = torch.tensor([ids]), torch.tensor([labels])
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=x, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()

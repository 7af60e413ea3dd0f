"""Token ids of the answer probe and of each gold alias, as the belief scorer reads them.

The belief log b_{i,t} is the mean log-prob of the gold answer's tokens after the context c_{i,t} and the
answer probe (`algorithm.answer_probe`, e.g. `<answer>`). The answer must be tokenised the way the policy
would write it after the probe. Our templates write answers as `<answer> Beijing </answer>`: one space
after the probe. With a byte-level BPE (Qwen2, our tiny tokenizer) the space belongs to the answer's
first token ("ĠBeijing"), so tokenising " Beijing" on its own differs from "Beijing" and is what the
model actually emits. We therefore tokenise `probe + " " + alias` as one text (no special tokens) and
split it where the probe's own ids end; when a tokenizer merges across that boundary (the probe's ids
are not a prefix of the joint ids), we fall back to `probe` and `" " + alias` tokenised separately.
Aliases that tokenise identically are kept once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ANSWER_SEPARATOR = " "  # between the probe and the answer, as in `<answer> {answer} </answer>`


def probe_token_ids(tokenizer: Any, probe_text: str) -> list[int]:
    """Ids of the answer probe (no special tokens); ValueError if it tokenises to nothing."""
    ids = tokenizer.encode(probe_text, add_special_tokens=False)
    if not ids:
        raise ValueError(
            f"algorithm.answer_probe={probe_text!r} tokenises to no ids; give the answer's opening text"
        )
    return list(ids)


def alias_token_ids(tokenizer: Any, probe_text: str, golds: Sequence[str]) -> list[list[int]]:
    """Ids of each gold alias as written after the probe (see the module docstring), distinct, in order."""
    probe = probe_token_ids(tokenizer, probe_text)
    out: list[list[int]] = []
    for alias in golds:
        joint = tokenizer.encode(probe_text + ANSWER_SEPARATOR + alias, add_special_tokens=False)
        if joint[: len(probe)] == probe and len(joint) > len(probe):
            ids = list(joint[len(probe) :])
        else:
            ids = list(tokenizer.encode(ANSWER_SEPARATOR + alias, add_special_tokens=False))
        if not ids:
            raise ValueError(f"gold alias {alias!r} tokenises to no ids")
        if ids not in out:
            out.append(ids)
    return out

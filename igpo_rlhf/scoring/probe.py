"""Token ids of the answer probe and of each gold alias, as the belief scorer reads them.

The belief log b_{i,t} is the mean log-prob of the gold answer's tokens after the context c_{i,t} and the
answer probe (`algorithm.answer_probe`, e.g. `<answer>`). The answer must be tokenised the way the policy
would write it after the probe, and that depends on the answer format the rollouts use: `<answer> Beijing
</answer>` puts one space after the tag, `<answer>\\nBeijing\\n</answer>` (the IGPO reference code's format)
a newline. With a byte-level BPE (Qwen2, our tiny tokenizer) the space belongs to the answer's first token
("ĠBeijing"), so " Beijing", "\\nBeijing" and "Beijing" are different ids, and only the one the model
actually emits measures its belief.

The separator is `algorithm.answer_separator`, or, when that is null, the whitespace the prompt's own example
answer puts after `<answer>` (`igpo_rlhf.config.prompt_answer_separator`; " " without an example). We tokenise
`probe + separator + alias` as one text (no special tokens) and split it where the probe's own ids end; when
a tokenizer merges across that boundary (the probe's ids are not a prefix of the joint ids), we fall back to
`probe` and `separator + alias` tokenised separately. An empty probe is valid: the belief is then
log p(answer | context) with the answer tokenised on its own (no separator: nothing precedes it in the
probe). Aliases that tokenise identically are kept once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from igpo_rlhf.config import DEFAULT_ANSWER_SEPARATOR, Config, prompt_answer_separator


def run_answer_separator(cfg: Config) -> str:
    """The separator a run's beliefs use (trainer, `igpo eval --beliefs`)."""
    return answer_separator(
        cfg.algorithm.answer_separator, cfg.rollout.system_prompt, cfg.rollout.prompt_template
    )


def answer_separator(configured: str | None, *prompt_texts: str | None) -> str:
    """The separator between the probe and the answer: `configured` (algorithm.answer_separator) when set,
    else the prompt's example's, else " "."""
    if configured is not None:
        return configured
    shown = prompt_answer_separator(*prompt_texts)
    return DEFAULT_ANSWER_SEPARATOR if shown is None else shown


def probe_token_ids(tokenizer: Any, probe_text: str) -> list[int]:
    """Ids of the answer probe (no special tokens): [] for an empty probe; ValueError if a non-empty probe
    tokenises to nothing."""
    if probe_text == "":
        return []
    ids = tokenizer.encode(probe_text, add_special_tokens=False)
    if not ids:
        raise ValueError(
            f"algorithm.answer_probe={probe_text!r} tokenises to no ids; give the answer's opening text "
            "(or '' to score the answer right after the context)"
        )
    return list(ids)


def alias_token_ids(
    tokenizer: Any, probe_text: str, golds: Sequence[str], separator: str = DEFAULT_ANSWER_SEPARATOR
) -> list[list[int]]:
    """Ids of each gold alias as written after the probe (see the module docstring), distinct, in order."""
    probe = probe_token_ids(tokenizer, probe_text)
    out: list[list[int]] = []
    for alias in golds:
        if not probe:
            ids = list(tokenizer.encode(alias, add_special_tokens=False))
        else:
            joint = tokenizer.encode(probe_text + separator + alias, add_special_tokens=False)
            if joint[: len(probe)] == probe and len(joint) > len(probe):
                ids = list(joint[len(probe) :])
            else:
                ids = list(tokenizer.encode(separator + alias, add_special_tokens=False))
        if not ids:
            raise ValueError(f"gold alias {alias!r} tokenises to no ids")
        if ids not in out:
            out.append(ids)
    return out

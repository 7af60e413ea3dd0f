"""QA metrics over gold aliases: exact match, token F1, cover exact match.

Two scorers:
- variant="squad" (default): SQuAD/HotpotQA normalisation (lower case, punctuation removed, articles
  a/an/the removed, whitespace collapsed), F1 over token multisets, with HotpotQA's yes/no/noanswer rule.
- variant="igpo": the IGPO paper's scorer, so our numbers can be set beside the paper's. Reproduced from
  `compute_f1` / `preprocess_text` in GuoqingWang1/IGPO, verl/utils/reward_score/info_gain.py (commit
  bdceb82): lower case; every ASCII punctuation character replaced by a space; whitespace collapsed; no
  article removal; F1 over token *sets*; an alias or prediction with no tokens scores 0; EM is equality
  of the processed strings; no yes/no rule; maximum over aliases.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

ANSWER_SPLIT = "<|answer_split|>"  # alias separator of the shipped DeepResearcher parquet files
VARIANTS = ("squad", "igpo")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)
_PUNCTUATION_TO_SPACE = str.maketrans(string.punctuation, " " * len(string.punctuation))
_YES_NO = ("yes", "no", "noanswer")

Golds = str | Sequence[str] | np.ndarray


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not a scorer; accepted: {', '.join(map(repr, VARIANTS))}")


def normalize_answer(s: str, variant: str = "squad") -> str:
    """Text as the scorer compares it (see the module docstring for the two variants)."""
    _check_variant(variant)
    if not isinstance(s, str):
        raise ValueError(f"answer {s!r} is a {type(s).__name__}; expected a str")
    s = s.lower()
    if variant == "igpo":
        return " ".join(s.translate(_PUNCTUATION_TO_SPACE).split())
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def split_golds(golds: Golds) -> list[str]:
    """Gold aliases as a list of stripped, non-empty strings.

    Accepts one string (aliases joined by `<|answer_split|>`, the DeepResearcher format; a plain string is
    one alias), or a list / tuple / 1-D numpy array of strings (each may itself be joined the same way).
    """
    if isinstance(golds, str):
        parts = golds.split(ANSWER_SPLIT)
    elif isinstance(golds, (list, tuple, np.ndarray)):
        if isinstance(golds, np.ndarray) and golds.ndim != 1:
            raise ValueError(f"golds is a {golds.ndim}-D array; expected a 1-D array of strings")
        parts = []
        for k, g in enumerate(golds):
            if not isinstance(g, str):
                raise ValueError(f"golds[{k}]={g!r} is a {type(g).__name__}; every gold alias must be a str")
            parts.extend(g.split(ANSWER_SPLIT))
    else:
        raise ValueError(
            f"golds is a {type(golds).__name__}; expected a str (aliases joined by {ANSWER_SPLIT!r}) "
            "or a list, tuple or 1-D numpy array of str"
        )
    aliases = [p.strip() for p in parts if p.strip()]
    if not aliases:
        raise ValueError(f"golds={golds!r} holds no non-empty answer")
    return aliases


def _f1_squad(pred: str, gold: str) -> float:
    """Token-multiset F1 of two normalised strings, with HotpotQA's yes/no/noanswer rule."""
    if (pred in _YES_NO or gold in _YES_NO) and pred != gold:
        return 0.0
    pred_tokens, gold_tokens = pred.split(), gold.split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)  # SQuAD v2 convention: both empty is a match
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _f1_igpo(pred: str, gold: str) -> float:
    """Token-set F1 of two normalised strings, as the IGPO reference scorer computes it."""
    pred_tokens, gold_tokens = set(pred.split()), set(gold.split())
    if not pred_tokens or not gold_tokens:
        return 0.0
    common = len(pred_tokens & gold_tokens)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, golds: Golds, variant: str = "squad") -> float:
    """Token F1 of `prediction` against the best-matching gold alias."""
    pred = normalize_answer(prediction, variant)
    f1 = _f1_squad if variant == "squad" else _f1_igpo
    return max(f1(pred, normalize_answer(g, variant)) for g in split_golds(golds))


def exact_match(prediction: str, golds: Golds, variant: str = "squad") -> float:
    """1.0 if the normalised prediction equals a normalised gold alias, else 0.0."""
    pred = normalize_answer(prediction, variant)
    return float(any(pred == normalize_answer(g, variant) for g in split_golds(golds)))


def cover_exact_match(
    prediction: str, golds: Golds, variant: str = "squad", *, whole_words: bool = True
) -> float:
    """1.0 if a normalised gold alias occurs inside the normalised prediction, else 0.0.

    whole_words=True (default) matches whole tokens only, so gold "no" is not found in "not now" nor
    "1" in "1945"; whole_words=False is the plain substring test some papers use. A gold alias that
    normalises to nothing (e.g. "The") only covers an equally empty prediction.
    """
    pred = normalize_answer(prediction, variant)
    for g in split_golds(golds):
        gold = normalize_answer(g, variant)
        if not gold:
            hit = not pred
        elif whole_words:
            hit = f" {gold} " in f" {pred} "
        else:
            hit = gold in pred
        if hit:
            return 1.0
    return 0.0

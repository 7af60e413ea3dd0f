"""What the trajectory, group and token pages show, built from whole rows of a rollouts file.

A trajectory: the prompt, then per turn t the reasoning, the queries, the retrieved documents, the answer,
and beside it log b_{t-1} -> log b_t, r_t, r̃_t and Â_t (stored and recomputed from the rows of its group
with igpo_rlhf.algo, credit.py). A group: its n rollouts with GRPO's and IGPO's advantages per turn. The
token view: every token of the row marked prompt, action (trained: inside turn_spans) or observation
(inside obs_spans), decoded with the run's tokenizer when it is on this machine, else the stored texts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from igpo_rlhf.config import RolloutConfig
from igpo_rlhf.rewards import outcome_reward
from igpo_rlhf.viewer.credit import (
    CreditCheck,
    CreditSettings,
    GroupCredit,
    RolloutCredit,
    RolloutInput,
    check_stored,
    group_credit,
)
from igpo_rlhf.viewer.directory import ViewedDirectory
from igpo_rlhf.viewer.rollouts import (
    RolloutsFile,
    RowSummary,
    finite_or_none,
    group_key,
    outcome_of,
    row_identity,
)

_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
_MARKUP = re.compile(r"<(search|answer|tool_call)>.*?(?:</\1>|$)", re.DOTALL)
_DEFAULT_DOCUMENT_TEMPLATE = RolloutConfig.model_fields["document_template"].default
_DEFAULT_OBSERVATION_TEMPLATE = RolloutConfig.model_fields["observation_template"].default


@dataclass
class Document:
    """One retrieved passage, when the observation text can be split with the run's document template."""

    rank: str | None
    title: str | None
    text: str


@dataclass
class TurnView:
    t: int  # 1..T
    kind: str  # search | answer | invalid
    reasoning: str | None  # the <think> blocks (or the text outside the action markup)
    queries: list[str]
    answer: str | None
    error: str | None
    text: str | None  # the generated text of the turn
    observation: str | None  # the text appended after it (None on the last turn)
    documents: list[Document]
    tokens: int  # generated (trained) tokens
    observation_tokens: int
    log_b_before: float | None  # log b_{t-1}: belief in the gold answer before the turn
    log_b_after: float | None  # log b_t: after the turn and its observation (t < T)
    reward: float | None  # r_t recomputed: IG reward (t < T) or the outcome (t = T)
    reward_stored: float | None  # the row's turn_rewards[t-1] (igpo rows)
    normalized: float | None  # r̃_t (IGPO)
    advantage: float | None  # the row's stored turn_advantages[t-1]: what the trainer used
    advantage_igpo: float | None  # Â_t recomputed with IGPO
    advantage_grpo: float | None  # GRPO's Â (the same on every turn)


@dataclass
class Sibling:
    """Another rollout of the same group, for navigation."""

    index: int
    sample_id: int | None
    outcome: str
    turns: int


@dataclass
class TrajectoryDetail:
    part: str
    index: int
    kind: str  # run | eval
    step: int | None
    group: str | None  # the group key (the group page's URL)
    group_id: int | None
    sample_id: int | None
    source: str | None
    question: str
    golds: list[str]
    answer: str | None
    finish_reason: str
    outcome: str
    f1: float | None
    em: float | None
    outcome_reward: float  # r_{i,T_i}: stored, or computed from the answer under the settings
    estimator: str
    settings: CreditSettings
    prompt: str | None
    log_beliefs: list[float] | None  # [log b_0..log b_{T-1}]
    turns: list[TurnView]
    check: CreditCheck
    credit_note: str | None
    siblings: list[Sibling]
    n_tokens: int
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # eval scores of the row (cover_em, f1_igpo, ...)


@dataclass
class GroupRollout:
    index: int
    sample_id: int | None
    answer: str | None
    outcome: str
    f1: float | None
    outcome_reward: float
    finish_reason: str
    queries: list[list[str]]  # per turn
    kinds: list[str]  # per turn
    log_beliefs: list[float] | None
    rewards: list[float] | None  # IGPO's turn rewards
    igpo: list[float] | None
    grpo: list[float]
    stored: list[float] | None


@dataclass
class GroupDetail:
    part: str
    step: int | None
    group: str
    question: str
    golds: list[str]
    estimator: str
    settings: CreditSettings
    rollouts: list[GroupRollout]
    check: CreditCheck
    credit_note: str | None


@dataclass
class TokenView:
    source: Literal["tokenizer", "segments"]
    note: str
    pieces: list[str]  # one token's text (tokenizer) or one segment's text (segments)
    kinds: list[str]  # per piece: p (prompt), a (action: trained), o (observation), x (outside every span)
    turns: list[int]  # per piece: the turn t it belongs to (0: prompt)
    ids: list[int] | None  # per piece (tokenizer only)
    counts: dict[str, int]  # tokens per kind


# ------------------------------------------------------------------------------------------ helpers
def _float_list(value: Any) -> list[float] | None:
    if not isinstance(value, list):
        return None
    out = [finite_or_none(v) for v in value]
    return None if None in out else out  # type: ignore[return-value]


def reasoning_of(text: str | None) -> str | None:
    """The <think> blocks of a turn, or failing those the text outside the action markup."""
    if not text:
        return None
    blocks = [b.strip() for b in _THINK.findall(text) if b.strip()]
    if blocks:
        return "\n\n".join(blocks)
    rest = _MARKUP.sub("", text).strip()
    return rest or None


def split_documents(
    observation: str | None, document_template: str, observation_template: str
) -> list[Document]:
    """Passages of an observation, found with the run's templates: each passage starts where the document
    template's head (the part before {text}, e.g. "Doc {rank}(Title: {title}) ") matches, and runs to the
    next one. [] when nothing matches; the page then shows the raw text."""
    if not observation or "{text}" not in document_template:
        return []
    prefix, _, suffix = observation_template.partition("{documents}")
    body = observation
    if prefix and body.startswith(prefix):
        body = body[len(prefix) :]
    if suffix and body.endswith(suffix):
        body = body[: -len(suffix)]
    head, _, tail = document_template.partition("{text}")
    pattern = re.escape(head)
    for name, group in (("rank", r"(?P<rank>\d+)"), ("title", r"(?P<title>[^\n]*?)"), ("query", r"[^\n]*?")):
        pattern = pattern.replace(re.escape("{" + name + "}"), group, 1)
    if not head.strip():
        return []
    matches = list(re.finditer(pattern, body))
    docs = []
    for k, m in enumerate(matches):
        end = matches[k + 1].start() if k + 1 < len(matches) else len(body)
        text = body[m.end() : end]
        if tail.strip() and text.rstrip().endswith(tail.strip()):
            text = text.rstrip()[: -len(tail.strip())]
        groups = m.groupdict()
        docs.append(Document(groups.get("rank"), groups.get("title"), text.strip()))
    return docs


def _segment_texts(row: dict[str, Any], tokenizer) -> tuple[str | None, list[str | None], list[str | None]]:
    """(prompt, turn texts, observation texts): stored, else decoded from the token ids, else None."""
    turns, obs = row["turn_spans"], row["obs_spans"]
    prompt = row.get("prompt_text")
    turn_texts = row.get("turn_texts")
    obs_texts = row.get("obs_texts")
    ids = row.get("token_ids")
    if (prompt is None or turn_texts is None or obs_texts is None) and tokenizer is not None and ids:

        def decode(a: int, b: int) -> str:
            return tokenizer.decode(ids[a:b], skip_special_tokens=False)

        prompt = prompt if prompt is not None else decode(0, int(row.get("prompt_len") or turns[0][0]))
        turn_texts = turn_texts if turn_texts is not None else [decode(a, b) for a, b in turns]
        obs_texts = obs_texts if obs_texts is not None else [decode(a, b) for a, b in obs]
    turn_texts = list(turn_texts) if isinstance(turn_texts, list) else []
    obs_texts = list(obs_texts) if isinstance(obs_texts, list) else []
    turn_texts += [None] * (len(turns) - len(turn_texts))
    obs_texts += [None] * (len(obs) - len(obs_texts))
    return prompt, turn_texts, obs_texts


def _templates(view: ViewedDirectory) -> tuple[str, str]:
    """(document_template, observation_template): the run config's rollout section, or the eval setting."""
    section = (view.config or {}).get("rollout") or (view.scores.setting if view.scores else {}) or {}
    doc = section.get("document_template")
    obs = section.get("observation_template")
    return (
        doc if isinstance(doc, str) else _DEFAULT_DOCUMENT_TEMPLATE,
        obs if isinstance(obs, str) else _DEFAULT_OBSERVATION_TEMPLATE,
    )


def _outcome_reward(row: dict[str, Any], settings: CreditSettings) -> float:
    stored = finite_or_none(row.get("outcome_reward"))
    if stored is not None:
        return stored
    answer = row["answer"] if isinstance(row["answer"], str) else None
    return outcome_reward(
        answer,
        row["golds"],
        metric=settings.outcome_metric,
        variant=settings.f1_variant,
        format_penalty=settings.format_penalty,
    )


def _group_rows(view: ViewedDirectory, part: str, group: str | None, index: int) -> list[tuple[int, dict]]:
    """(index, row) of every rollout of the group, in file order (just the row itself without a group)."""
    file = view.file(part)
    members = [r.index for r in file.index().rows if group is not None and r.group == group]
    if index not in members:
        return [(index, file.read_row(index))]
    return [(i, file.read_row(i)) for i in members]


def _credit(rows: list[dict], settings: CreditSettings, kind: str = "run") -> tuple[GroupCredit, CreditCheck]:
    """Both estimators' credit for the group's rows, and the check of their stored advantages; a row the
    algo functions reject (a positive log-belief, a bad outcome setting) gives no credit and says why."""
    try:
        inputs = [
            RolloutInput(len(r["turn_spans"]), _outcome_reward(r, settings), _float_list(r.get("beliefs")))
            for r in rows
        ]
        credit = group_credit(inputs, settings)
    except ValueError as err:
        empty = [RolloutCredit(None, None, None, None, []) for _ in rows]
        note = f"cannot recompute the credit: {err}"
        return GroupCredit(empty, note), CreditCheck("not_checked", None, note)
    if kind == "eval":
        note = (
            f"eval rollouts train nothing: Â is what IGPO ({settings.ig_kind}, norm {settings.norm}, γ {settings.gamma}) "
            "and GRPO would give them, grouped by question"
        )
        return credit, CreditCheck("not_checked", None, note)
    check = check_stored([_float_list(r.get("turn_advantages")) for r in rows], credit, settings)
    return credit, check


def _at(values: list[float] | None, k: int) -> float | None:
    return values[k] if values is not None and 0 <= k < len(values) else None


# --------------------------------------------------------------------------------------------- pages
@contextmanager
def _drawing(what: str) -> Iterator[None]:
    """A row whose values have the wrong type or shape (spans that are not pairs, ...) is a ValueError naming
    the row, which the page shows, rather than a crash."""
    try:
        yield
    except (TypeError, ValueError, IndexError, AttributeError) as err:
        raise ValueError(f"{what}: a value of the wrong type or shape ({type(err).__name__}: {err})") from err


def trajectory_detail(view: ViewedDirectory, part: str, index: int) -> TrajectoryDetail:
    """The trajectory page of row `index` of file `part` (KeyError: no such row; ValueError: bad row)."""
    file = view.file(part)
    row = file.read_row(index)
    with _drawing(f"{file.label} line {index + 1}"):
        return _trajectory_detail(view, file, row, part, index)


def _trajectory_detail(
    view: ViewedDirectory, file: RolloutsFile, row: dict[str, Any], part: str, index: int
) -> TrajectoryDetail:
    settings = view.settings
    group = group_key(row)
    members = _group_rows(view, part, group, index)
    credit, check = _credit([r for _, r in members], settings, view.kind)
    mine = credit.rollouts[[i for i, _ in members].index(index)]
    tokenizer, _ = view.tokenizer() if "turn_texts" not in row else (None, "")
    prompt, turn_texts, obs_texts = _segment_texts(row, tokenizer)
    doc_template, obs_template = _templates(view)
    log_b = _float_list(row.get("beliefs"))
    stored_rewards = _float_list(row.get("turn_rewards"))
    stored_adv = _float_list(row.get("turn_advantages"))
    estimator = str(row.get("estimator") or settings.estimator)
    if estimator != "igpo" or (stored_rewards is not None and len(stored_rewards) != len(row["turn_spans"])):
        stored_rewards = None  # grpo rows store [outcome] only
    turns = []
    T = len(row["turn_spans"])
    for k, (a, b) in enumerate(row["turn_spans"]):
        action = row["actions"][k] if k < len(row["actions"]) and isinstance(row["actions"][k], dict) else {}
        obs_span = row["obs_spans"][k] if k < len(row["obs_spans"]) else None
        observation = obs_texts[k] if k < len(obs_texts) else None
        turns.append(
            TurnView(
                t=k + 1,
                kind=str(action.get("kind", "?")),
                reasoning=reasoning_of(turn_texts[k]),
                queries=[str(q) for q in action.get("queries") or []],
                answer=action.get("answer"),
                error=action.get("error"),
                text=turn_texts[k],
                observation=observation,
                documents=split_documents(observation, doc_template, obs_template),
                tokens=b - a,
                observation_tokens=(obs_span[1] - obs_span[0]) if obs_span else 0,
                log_b_before=_at(log_b, k),
                log_b_after=_at(log_b, k + 1) if k + 1 < T else None,
                reward=_at(mine.rewards, k),
                reward_stored=_at(stored_rewards, k),
                normalized=_at(mine.normalized, k),
                advantage=_at(stored_adv, k),
                advantage_igpo=_at(mine.igpo, k),
                advantage_grpo=_at(mine.grpo, k),
            )
        )
    answer = row["answer"] if isinstance(row["answer"], str) else None
    f1, em = finite_or_none(row.get("f1")), finite_or_none(row.get("em"))
    known = {"f1", "em", "cover_em", "f1_igpo", "sample", "source"}
    return TrajectoryDetail(
        part=part,
        index=index,
        kind=view.kind,
        step=row.get("step") if isinstance(row.get("step"), int) else file.step,
        group=group,
        **row_identity(row),
        answer=answer,
        outcome=outcome_of(answer, em, f1),
        f1=f1,
        em=em,
        outcome_reward=_outcome_reward(row, settings),
        estimator=estimator,
        settings=settings,
        prompt=prompt,
        log_beliefs=log_b,
        turns=turns,
        check=check,
        credit_note=credit.note,
        siblings=[
            Sibling(
                i, r.get("sample_id"), outcome_of(r["answer"], r.get("em"), r.get("f1")), len(r["turn_spans"])
            )
            for i, r in members
        ],
        n_tokens=len(row.get("token_ids") or []),
        meta=row.get("meta") if isinstance(row.get("meta"), dict) else {},
        extra={k: row[k] for k in known if k in row and k not in ("source",)},
    )


def group_detail(view: ViewedDirectory, part: str, group: str) -> GroupDetail:
    """The group page: every rollout of group `group` of file `part` with both estimators' credit."""
    file = view.file(part)
    summaries: list[RowSummary] = [r for r in file.index().rows if r.group == group]
    if not summaries:
        raise KeyError(f"{file.label} has no group {group!r} (a group is the group_id of the rows)")
    rows = [(s.index, file.read_row(s.index)) for s in summaries]
    with _drawing(f"{file.label}, group {group}"):
        return _group_detail(view, file, rows, group)


def _group_detail(
    view: ViewedDirectory, file: RolloutsFile, rows: list[tuple[int, dict[str, Any]]], group: str
) -> GroupDetail:
    settings = view.settings
    credit, check = _credit([r for _, r in rows], settings, view.kind)
    rollouts = []
    for (i, r), c in zip(rows, credit.rollouts, strict=True):
        actions = [a if isinstance(a, dict) else {} for a in r["actions"]]
        answer = r["answer"] if isinstance(r["answer"], str) else None
        f1 = finite_or_none(r.get("f1"))
        rollouts.append(
            GroupRollout(
                index=i,
                sample_id=r.get("sample_id"),
                answer=answer,
                outcome=outcome_of(answer, finite_or_none(r.get("em")), f1),
                f1=f1,
                outcome_reward=_outcome_reward(r, settings),
                finish_reason=str(r["finish_reason"]),
                queries=[[str(q) for q in a.get("queries") or []] for a in actions],
                kinds=[str(a.get("kind", "?")) for a in actions],
                log_beliefs=_float_list(r.get("beliefs")),
                rewards=c.rewards,
                igpo=c.igpo,
                grpo=c.grpo,
                stored=_float_list(r.get("turn_advantages")),
            )
        )
    first = rows[0][1]
    return GroupDetail(
        part=file.key,
        step=file.step,
        group=group,
        question=str(first["question"]),
        golds=[str(g) for g in first["golds"]],
        estimator=str(first.get("estimator") or settings.estimator),
        settings=settings,
        rollouts=rollouts,
        check=check,
        credit_note=credit.note,
    )


def token_view(view: ViewedDirectory, part: str, index: int) -> TokenView:
    """Every token of the row with its kind: prompt, action (trained) or observation."""
    file = view.file(part)
    row = file.read_row(index)
    with _drawing(f"{file.label} line {index + 1}"):
        return _token_view(view, row)


def _token_view(view: ViewedDirectory, row: dict[str, Any]) -> TokenView:
    turns, obs = row["turn_spans"], row["obs_spans"]
    ids = row.get("token_ids")
    tokenizer, note = view.tokenizer()
    if tokenizer is not None and isinstance(ids, list) and ids:
        kinds = ["p"] * len(ids)
        where = [0] * len(ids)
        first = turns[0][0] if turns else len(ids)
        prompt_len = int(row.get("prompt_len") or first)
        for start in range(prompt_len, len(ids)):
            kinds[start] = "x"
        for t, (a, b) in enumerate(turns, start=1):
            kinds[a:b] = ["a"] * (b - a)
            where[a:b] = [t] * (b - a)
        for t, (a, b) in enumerate(obs, start=1):
            kinds[a:b] = ["o"] * (b - a)
            where[a:b] = [t] * (b - a)
        pieces = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False)
        counts = {k: kinds.count(k) for k in ("p", "a", "o", "x")}
        return TokenView("tokenizer", note, pieces, kinds, where, list(ids), counts)
    prompt, turn_texts, obs_texts = _segment_texts(row, None)
    pieces, kinds, where = [prompt or ""], ["p"], [0]
    for t in range(len(turns)):
        pieces.append(turn_texts[t] or f"[turn {t + 1}: text not stored]")
        kinds.append("a")
        where.append(t + 1)
        if t < len(obs):
            pieces.append(obs_texts[t] or f"[observation {t + 1}: text not stored]")
            kinds.append("o")
            where.append(t + 1)
    counts = {
        "p": int(row.get("prompt_len") or 0),
        "a": sum(b - a for a, b in turns),
        "o": sum(b - a for a, b in obs),
        "x": 0,
    }
    return TokenView("segments", note, pieces, kinds, where, None, counts)

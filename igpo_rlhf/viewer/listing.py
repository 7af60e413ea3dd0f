"""The trajectory list: filter, sort and page the `RowSummary`s of one step (or of every step)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from igpo_rlhf.viewer.rollouts import OUTCOMES, RowSummary

SORT_KEYS = ("order", "reward", "f1", "ig", "turns", "searches", "tokens")
MAX_PER_PAGE = 500


@dataclass(frozen=True)
class ListQuery:
    """One request of the trajectory list; None means "any"."""

    text: str = ""  # case-insensitive substring of the question
    outcome: str | None = None  # one of OUTCOMES
    finish: str | None = None  # a finish reason (answer, invalid, max_turns, max_length, eos)
    turns: int | None = None
    searches: int | None = None
    source: str | None = None  # eval rows' dataset source
    group: str | None = None  # the group key (RowSummary.group)
    sort: str = "order"  # one of SORT_KEYS; "order" = file order
    descending: bool = True
    page: int = 1
    per_page: int = 50

    def __post_init__(self) -> None:
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise ValueError(f"outcome={self.outcome!r}; accepted: {', '.join(OUTCOMES)}")
        if self.sort not in SORT_KEYS:
            raise ValueError(f"sort={self.sort!r}; accepted: {', '.join(SORT_KEYS)}")
        if self.page < 1:
            raise ValueError(f"page={self.page}; pages count from 1")
        if not 1 <= self.per_page <= MAX_PER_PAGE:
            raise ValueError(f"per_page={self.per_page}; accepted: 1 to {MAX_PER_PAGE}")

    def keeps(self, row: RowSummary) -> bool:
        return (
            (not self.text or self.text.casefold() in row.question.casefold())
            and (self.outcome is None or row.outcome == self.outcome)
            and (self.finish is None or row.finish_reason == self.finish)
            and (self.turns is None or row.turns == self.turns)
            and (self.searches is None or row.searches == self.searches)
            and (self.source is None or row.source == self.source)
            and (self.group is None or row.group == self.group)
        )


@dataclass
class Facets:
    """Counts of each value over the rows before filtering: what the filter menus offer."""

    outcomes: dict[str, int] = field(default_factory=dict)
    finish_reasons: dict[str, int] = field(default_factory=dict)
    turns: dict[int, int] = field(default_factory=dict)
    searches: dict[int, int] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)


@dataclass
class ListPage:
    total: int  # rows passing the filters
    unfiltered: int  # rows in the listed files
    page: int
    pages: int
    per_page: int
    rows: list[RowSummary]
    facets: Facets


def facets_of(rows: Sequence[RowSummary]) -> Facets:
    return Facets(
        outcomes=dict(Counter(r.outcome for r in rows)),
        finish_reasons=dict(Counter(r.finish_reason for r in rows)),
        turns=dict(sorted(Counter(r.turns for r in rows).items())),
        searches=dict(sorted(Counter(r.searches for r in rows).items())),
        sources=dict(sorted(Counter(r.source for r in rows if r.source is not None).items())),
    )


def list_rows(rows: Sequence[RowSummary], query: ListQuery) -> ListPage:
    """Filter, sort (rows without the sort value last) and cut one page."""
    kept = [r for r in rows if query.keeps(r)]
    if query.sort != "order":
        present = [r for r in kept if getattr(r, query.sort) is not None]
        absent = [r for r in kept if getattr(r, query.sort) is None]
        present.sort(key=lambda r: getattr(r, query.sort), reverse=query.descending)
        kept = present + absent
    pages = max(1, -(-len(kept) // query.per_page))
    start = (query.page - 1) * query.per_page
    return ListPage(
        total=len(kept),
        unfiltered=len(rows),
        page=query.page,
        pages=pages,
        per_page=query.per_page,
        rows=kept[start : start + query.per_page],
        facets=facets_of(rows),
    )

"""Cursor pagination by id: ids sort by creation time (see `new_id`), so a cursor is just the last id seen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

MAX_LIMIT = 200
T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of rows and whether more follow after its last row."""

    items: list[T]
    has_more: bool


def paginate(
    session: Session,
    stmt: Select[T],
    *,
    key: InstrumentedAttribute[Any],
    after: Any | None,
    limit: int,
    newest_first: bool,
) -> Page[T]:
    """Rows of `stmt` after the cursor `after`, ordered by `key`; fetches one extra row to know `has_more`."""
    limit = max(1, min(limit, MAX_LIMIT))
    if after is not None:
        stmt = stmt.where(key < after if newest_first else key > after)
    stmt = stmt.order_by(key.desc() if newest_first else key.asc()).limit(limit + 1)
    rows = list(session.scalars(stmt))
    return Page(items=rows[:limit], has_more=len(rows) > limit)

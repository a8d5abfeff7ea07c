"""INSERT … ON CONFLICT DO UPDATE for SQLite and PostgreSQL, in batches.

Worker writes are replayed after a redelivery or a resume; upserting on each table's natural key makes
replaying a report harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Session

BATCH_ROWS = 500


def upsert_rows(
    session: Session,
    model: type[DeclarativeBase],
    rows: Sequence[dict[str, Any]],
    *,
    conflict: Sequence[str],
    update: Sequence[str],
) -> None:
    """Insert `rows`; on a conflict over the `conflict` columns overwrite the `update` columns."""
    dialect = session.get_bind().dialect.name
    for start in range(0, len(rows), BATCH_ROWS):
        batch = list(rows[start : start + BATCH_ROWS])
        if dialect == "postgresql":
            pg = postgresql.insert(model).values(batch)
            set_pg = {name: pg.excluded[name] for name in update}
            session.execute(pg.on_conflict_do_update(index_elements=list(conflict), set_=set_pg))
        elif dialect == "sqlite":
            lite = sqlite.insert(model).values(batch)
            set_lite = {name: lite.excluded[name] for name in update}
            session.execute(lite.on_conflict_do_update(index_elements=list(conflict), set_=set_lite))
        else:
            raise NotImplementedError(f"upsert is not implemented for the {dialect} dialect")

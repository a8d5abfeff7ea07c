"""A job's request is stored once, in `spec` (its TrainSpec dump): the columns base_model, method,
validation and seed, which repeated spec fields, are dropped. No query filters or indexes on them.

Upgrade first copies each column's value into the spec of a row whose spec lacks that field (rows the API
wrote have them all; a spec value that is present is what the worker ran, so it stays). Downgrade restores
the columns from the spec.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-24
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each dropped column with what downgrade gives a row whose spec lacks the field: TrainSpec's default
# (base_model has none; the API never wrote a spec without one), as SQL for the server default that
# SQLite needs to add a NOT NULL column, and as the value.
RESTORED: dict[str, tuple[sa.types.TypeEngine[Any], str, Any]] = {
    "base_model": (sa.String(length=200), "", ""),
    "method": (sa.String(length=20), "mapo", "mapo"),
    "validation": (sa.JSON(), "{}", {}),
    "seed": (sa.Integer(), "0", 0),
}


def _jobs(*columns: str) -> sa.TableClause:
    types: dict[str, sa.types.TypeEngine[Any]] = {"id": sa.String(length=40), "spec": sa.JSON()}
    types |= {name: type_ for name, (type_, _, _) in RESTORED.items()}
    return sa.table("jobs", *(sa.column(name, types[name]) for name in ("id", "spec", *columns)))


def _rewrite(jobs: sa.TableClause, rows: list[dict[str, Any]]) -> None:
    """UPDATE jobs SET <the keys of each row but `id`> WHERE id = row["id"], in one executemany."""
    if not rows:
        return
    names = [name for name in rows[0] if name != "id"]
    # Bound names may not equal column names in an UPDATE's VALUES, hence the prefix.
    statement = (
        jobs.update()
        .where(jobs.c.id == sa.bindparam("b_id"))
        .values({name: sa.bindparam(f"b_{name}") for name in names})
    )
    op.get_bind().execute(statement, [{f"b_{key}": value for key, value in row.items()} for row in rows])


def upgrade() -> None:
    jobs = _jobs(*RESTORED)
    filled = []
    for row in op.get_bind().execute(sa.select(jobs)).mappings():
        spec = dict(row["spec"] or {})
        missing = {name: row[name] for name in RESTORED if name not in spec}
        if missing:
            filled.append({"id": row["id"], "spec": {**spec, **missing}})
    _rewrite(jobs, filled)
    # Plain DROP COLUMN (SQLite 3.35+ has it; none of these columns is indexed or constrained), not a batch
    # rebuild: on SQLite a rebuild drops the jobs table, and with foreign keys on that cascades into every
    # job's events, metrics and outputs.
    for name in RESTORED:
        op.drop_column("jobs", name)


def downgrade() -> None:
    for name, (type_, server_default, _) in RESTORED.items():
        op.add_column("jobs", sa.Column(name, type_, nullable=False, server_default=server_default))
    jobs = _jobs(*RESTORED)
    restored = [
        {
            "id": row["id"],
            **{name: (row["spec"] or {}).get(name, value) for name, (_, _, value) in RESTORED.items()},
        }
        for row in op.get_bind().execute(sa.select(jobs.c.id, jobs.c.spec)).mappings()
    ]
    _rewrite(jobs, restored)
    # 0006 had no server defaults here. PostgreSQL drops them in place; SQLite could only by rebuilding
    # the table (see upgrade), so there they stay, harmless: every insert at 0006 names these columns.
    if op.get_bind().dialect.name != "sqlite":
        for name in RESTORED:
            op.alter_column("jobs", name, server_default=None)

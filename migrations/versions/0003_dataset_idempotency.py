"""Datasets remember the Idempotency-Key of their upload and a hash of the request.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN (no batch rebuild): on SQLite a rebuild would drop the table, and with foreign keys
    # on that cascades into the jobs that use each dataset.
    op.add_column("datasets", sa.Column("idempotency_key", sa.String(length=255), nullable=True))
    op.add_column("datasets", sa.Column("request_hash", sa.String(length=64), nullable=True))
    # A unique index rather than a constraint: SQLite can add an index without rebuilding the table.
    op.create_index(
        op.f("uq_datasets_tenant_id_idempotency_key"),
        "datasets",
        ["tenant_id", "idempotency_key"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index(op.f("uq_datasets_tenant_id_idempotency_key"), table_name="datasets")
    op.drop_column("datasets", "request_hash")
    op.drop_column("datasets", "idempotency_key")

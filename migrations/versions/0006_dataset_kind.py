"""Datasets record their kind (pairs, targets, avoid), until now read from the manifest in storage.

Existing rows get NULL here: a migration cannot reach storage. The API fills them in from their manifests
when it starts (api/services/dataset_kinds.py).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-17
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN (no batch rebuild): on SQLite a rebuild would drop the table, and with foreign keys
    # on that sets the dataset of every job that used it to NULL.
    op.add_column("datasets", sa.Column("kind", sa.String(length=20), nullable=True))


def downgrade() -> None:
    op.drop_column("datasets", "kind")

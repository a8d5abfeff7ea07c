"""Datasets record how many rows of a captioned-images upload had no caption (NULL for every other upload).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN, as in 0006: a SQLite batch rebuild would cascade into the jobs that use a dataset.
    op.add_column("datasets", sa.Column("captions_missing", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("datasets", "captions_missing")

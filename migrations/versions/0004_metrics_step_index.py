"""An index of metrics by (job, step), so a downsampled metrics read probes a grid of steps.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # INCLUDE (PostgreSQL only; ignored elsewhere) answers the grid from the index without the table.
    op.create_index(
        "ix_metrics_job_id_step",
        "metrics",
        ["job_id", "step"],
        unique=False,
        postgresql_include=["name", "value"],
    )


def downgrade() -> None:
    op.drop_index("ix_metrics_job_id_step", table_name="metrics")

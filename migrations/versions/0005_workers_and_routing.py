"""Workers advertise their queues and GPUs; jobs carry the queue they are routed to and a priority.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN with a server default (no batch rebuild): on SQLite a rebuild would drop the jobs
    # table, and with foreign keys on that cascades into every job's events, metrics and outputs.
    op.add_column(
        "jobs", sa.Column("queue", sa.String(length=100), nullable=False, server_default="mapo.gpu")
    )
    op.add_column("jobs", sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
    # The reconciler counts queued jobs per queue on every tick.
    op.create_index("ix_jobs_status_queue", "jobs", ["status", "queue"], unique=False)
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("queues", sa.JSON(), nullable=False),
        sa.Column("device", sa.String(length=10), nullable=False),
        sa.Column("gpu_model", sa.String(length=200), nullable=True),
        sa.Column("gpu_memory_mb", sa.Integer(), nullable=True),
        sa.Column("gpu_count", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=50), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )


def downgrade() -> None:
    op.drop_table("workers")
    op.drop_index("ix_jobs_status_queue", table_name="jobs")
    op.drop_column("jobs", "priority")
    op.drop_column("jobs", "queue")

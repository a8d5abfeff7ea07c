"""Webhooks: a job carries a list of hooks; tenants' signing secrets; deliveries and their attempts.

`jobs.webhook` (one optional hook, events named `job.running` …) becomes `jobs.webhooks` (a list, events
named `started` …). The column is renamed in place with ALTER TABLE … RENAME COLUMN rather than through
a batch rebuild: on SQLite the rebuild drops the old table, and with foreign keys on that would cascade
into every job's events, metrics and outputs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Event names of the single hook before this revision, and now.
_OLD_TO_NEW = {
    "job.running": "started",
    "job.succeeded": "succeeded",
    "job.failed": "failed",
    "job.cancelled": "cancelled",
}
_NEW_TO_OLD = {new: old for old, new in _OLD_TO_NEW.items()}


def upgrade() -> None:
    op.execute("ALTER TABLE jobs RENAME COLUMN webhook TO webhooks")
    _convert("webhooks", _hook_list)
    op.create_table(
        "webhook_secrets",
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("secret", sa.String(length=100), nullable=False),
        sa.Column("previous_secret", sa.String(length=100), nullable=True),
        sa.Column("previous_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_webhook_secrets_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_webhook_secrets")),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("url", sa.String(length=2100), nullable=False),
        sa.Column("event", sa.String(length=20), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_webhook_deliveries_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_webhook_deliveries_job_id_id", ["job_id", "id"], unique=False)
        batch_op.create_index(
            "ix_webhook_deliveries_status_next_attempt_at", ["status", "next_attempt_at"], unique=False
        )
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("delivery_id", sa.String(length=40), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Double(), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["webhook_deliveries.id"],
            name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
        sa.UniqueConstraint("delivery_id", "number", name=op.f("uq_webhook_attempts_delivery_id_number")),
    )


def downgrade() -> None:
    op.drop_table("webhook_attempts")
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_deliveries_status_next_attempt_at")
        batch_op.drop_index("ix_webhook_deliveries_job_id_id")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_secrets")
    # Only the first hook of each job fits the old single-hook column.
    _convert("webhooks", _single_hook)
    op.execute("ALTER TABLE jobs RENAME COLUMN webhooks TO webhook")


def _convert(column: str, change: Callable[[Any], Any]) -> None:
    jobs = sa.table("jobs", sa.column("id", sa.String()), sa.column(column, sa.JSON()))
    bind = op.get_bind()
    for job_id, value in bind.execute(sa.select(jobs.c.id, jobs.c[column])).all():
        bind.execute(sa.update(jobs).where(jobs.c.id == job_id).values({column: change(value)}))


def _hook_list(old: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not old:
        return []
    events = [_OLD_TO_NEW[e] for e in old.get("events", []) if e in _OLD_TO_NEW]
    return [{"url": old["url"], "events": events or ["succeeded", "failed", "cancelled"]}]


def _single_hook(hooks: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    if not hooks:
        return None
    events = [_NEW_TO_OLD[e] for e in hooks[0].get("events", []) if e in _NEW_TO_OLD]
    return {"url": hooks[0]["url"], "events": events}

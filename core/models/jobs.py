"""A training job: its request (the TrainSpec dump in `spec`, its only copy), its lifecycle state and its
progress.

States: queued → running → succeeded | failed | cancelled, with `cancelling` while a cancel is honoured
(a queued job is cancelled at once). Only core.lifecycle changes `status`. `last_event_seq` hands out the
per-job event ids.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from core.models.base import Base, UTCDateTime, new_id, utcnow
from core.settings import DEFAULT_QUEUE


class JobStatus(StrEnum):
    """A job's state. The values are what the column stores and the API shows (a str enum: each member
    equals its value, so comparisons with plain strings and JSON output are unchanged)."""

    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


JOB_STATUSES: tuple[JobStatus, ...] = tuple(JobStatus)
FINISHED_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
)
ACTIVE_STATUSES: frozenset[JobStatus] = frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING})
# A worker holds the job in these: its heartbeat counts, and it is the one to end it.
HELD_STATUSES: frozenset[JobStatus] = frozenset({JobStatus.RUNNING, JobStatus.CANCELLING})


class JobStatusType(TypeDecorator[JobStatus]):
    """A `JobStatus` stored as its value in a VARCHAR(20) (the column as migrated; no database enum, so
    a new state needs no migration), read back as the enum member."""

    impl = String(20)
    cache_ok = True

    def process_bind_param(self, value: JobStatus | str | None, dialect: Dialect) -> str | None:
        return None if value is None else JobStatus(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> JobStatus | None:
        return None if value is None else JobStatus(value)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_jobs_tenant_id_status", "tenant_id", "status"),
        Index("ix_jobs_tenant_id_id", "tenant_id", "id"),
        Index("ix_jobs_status_queue", "status", "queue"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # SET NULL: deleting a dataset (allowed once its jobs have finished) keeps their history.
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"), index=True)
    # The job's request, stored once: no column repeats a spec field (migration 0007 dropped those), so a
    # new TrainSpec field needs no column and no mapping code.
    spec: Mapped[dict[str, Any]] = mapped_column(
        JSON, doc="TrainSpec dump; base_model is the public name (see Settings.base_models)."
    )
    # [{url, events}]; nullable only because the column began as a single optional hook (migration 0002).
    webhooks: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=True, default=list)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    queue: Mapped[str] = mapped_column(
        String(100), default=DEFAULT_QUEUE, server_default=DEFAULT_QUEUE, doc="Broker queue it waits on."
    )
    priority: Mapped[int] = mapped_column(
        default=0, server_default="0", doc="0-9, higher first within its queue."
    )
    status: Mapped[JobStatus] = mapped_column(JobStatusType(), default=JobStatus.QUEUED)
    step: Mapped[int] = mapped_column(default=0)
    total_steps: Mapped[int] = mapped_column(default=0)
    eta_seconds: Mapped[float | None] = mapped_column(default=None)
    error_code: Mapped[str | None] = mapped_column(String(100), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    latest_metrics: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    worker_id: Mapped[str | None] = mapped_column(String(255), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    attempts: Mapped[int] = mapped_column(default=0)
    # Times its training process died while it ran (killed, out of memory, its worker lost; a graceful
    # hand-back does not count): at Settings.max_worker_losses the job fails instead of being requeued.
    worker_losses: Mapped[int] = mapped_column(default=0, server_default="0")
    last_event_seq: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

"""A training job: its request (spec), its lifecycle state and its progress.

States: queued → running → succeeded | failed | cancelled, with `cancelling` while a cancel is honoured
(a queued job is cancelled at once). `last_event_seq` hands out the per-job event ids.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import Base, UTCDateTime, new_id, utcnow
from core.settings import DEFAULT_QUEUE

JobStatus = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
FINISHED_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE_STATUSES: frozenset[str] = frozenset({"queued", "running", "cancelling"})


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
    base_model: Mapped[str] = mapped_column(String(200), doc="Public name; see Settings.base_models.")
    method: Mapped[str] = mapped_column(String(20))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, doc="TrainSpec dump; base_model is the public name.")
    validation: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # [{url, events}]; nullable only because the column began as a single optional hook (migration 0002).
    webhooks: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=True, default=list)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    seed: Mapped[int] = mapped_column(default=0)
    queue: Mapped[str] = mapped_column(
        String(100), default=DEFAULT_QUEUE, server_default=DEFAULT_QUEUE, doc="Broker queue it waits on."
    )
    priority: Mapped[int] = mapped_column(
        default=0, server_default="0", doc="0-9, higher first within its queue."
    )
    status: Mapped[str] = mapped_column(String(20), default="queued")
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
    last_event_seq: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

"""One scalar of one job at one optimizer step; a re-run step (after resume) overwrites, never duplicates."""

from __future__ import annotations

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import Base


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (
        UniqueConstraint("job_id", "name", "step"),
        # Downsampled reads pick a grid of steps across all names; on PostgreSQL the included columns
        # let them be answered from the index alone (migration 0004).
        Index("ix_metrics_job_id_step", "job_id", "step", postgresql_include=["name", "value"]),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int]
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float]

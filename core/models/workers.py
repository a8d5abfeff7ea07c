"""A worker process that consumes training queues, and what it has to train with.

Each worker's main process upserts its row at start and stamps `last_seen_at` on every reconciler tick;
a row whose stamp is older than the heartbeat timeout is a worker that is gone (stopped, crashed or cut
off). Workers are shared infrastructure: the rows hold no tenant's data.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy import JSON, String
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import Base, UTCDateTime, utcnow

DeviceKind = Literal["cpu", "cuda"]


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(255), primary_key=True, doc="Celery node name, e.g. gpu1@host.")
    hostname: Mapped[str] = mapped_column(String(255))
    queues: Mapped[list[str]] = mapped_column(JSON, doc="Training queues it consumes.")
    device: Mapped[str] = mapped_column(String(10), doc="cpu or cuda.")
    gpu_model: Mapped[str | None] = mapped_column(String(200), default=None)
    gpu_memory_mb: Mapped[int | None] = mapped_column(default=None, doc="Per GPU, in MiB.")
    gpu_count: Mapped[int] = mapped_column(default=0)
    version: Mapped[str] = mapped_column(String(50))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)

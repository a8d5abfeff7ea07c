"""Workers: each one's advertisement (queues, GPUs), its liveness stamp, and the list the API shows."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.models import Worker, utcnow
from core.repositories.upsert import upsert_rows

# Everything but the id is the worker's to overwrite when it starts again under the same name.
_ADVERTISED = (
    "hostname",
    "queues",
    "device",
    "gpu_model",
    "gpu_memory_mb",
    "gpu_count",
    "version",
    "started_at",
    "last_seen_at",
    "stopped_at",
)


def register_worker(session: Session, advertisement: dict[str, Any]) -> None:
    """Insert the worker's row, or replace it when a worker of that name starts again."""
    now = utcnow()
    row = {"started_at": now, "last_seen_at": now, "stopped_at": None, **advertisement}
    upsert_rows(session, Worker, [row], conflict=["id"], update=[c for c in _ADVERTISED if c in row])


def touch_worker(session: Session, worker_id: str) -> bool:
    """Stamp `last_seen_at`; False if the row is gone (re-register then)."""
    stmt = update(Worker).where(Worker.id == worker_id).values(last_seen_at=utcnow(), stopped_at=None)
    result = session.execute(stmt, execution_options={"synchronize_session": False})
    return bool(getattr(result, "rowcount", 0))


def mark_stopped(session: Session, worker_id: str) -> None:
    """A worker that shuts down cleanly says so, rather than waiting to be timed out."""
    stmt = update(Worker).where(Worker.id == worker_id).values(stopped_at=utcnow())
    session.execute(stmt, execution_options={"synchronize_session": False})


def list_workers(session: Session) -> list[Worker]:
    """Every worker row, by id (one per worker name ever started: a bounded set)."""
    return list(session.scalars(select(Worker).order_by(Worker.id)))

"""A job's event log. Event ids (`seq`) come from the job row's counter, bumped in the same UPDATE that
reserves them, so concurrent writers (worker, API cancel) never hand out the same id."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from core.models import Job, JobEvent, utcnow
from core.repositories.pagination import Page, paginate


@dataclass(frozen=True)
class NewEvent:
    """An event to append; `data` must be JSON-serialisable. `created_at` is when it happened (None:
    when it is written)."""

    type: str
    message: str = ""
    level: str = "info"
    data: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None


def append_events(session: Session, job_id: str, events: Sequence[NewEvent]) -> list[int]:
    """Append `events` in order and return their ids; raises LookupError if the job does not exist."""
    if not events:
        return []
    reserve = (
        update(Job)
        .where(Job.id == job_id)
        .values(last_event_seq=Job.last_event_seq + len(events))
        .returning(Job.last_event_seq)
    )
    last = session.execute(reserve, execution_options={"synchronize_session": False}).scalar_one_or_none()
    if last is None:
        raise LookupError(f"job {job_id} does not exist")
    first = last - len(events) + 1
    now = utcnow()
    rows = [
        {
            "job_id": job_id,
            "seq": first + i,
            "created_at": e.created_at or now,
            "level": e.level,
            "type": e.type,
            "message": e.message,
            "data": e.data,
        }
        for i, e in enumerate(events)
    ]
    session.execute(insert(JobEvent), rows)
    return list(range(first, last + 1))


def append_event(
    session: Session,
    job_id: str,
    type: str,
    message: str = "",
    *,
    level: str = "info",
    data: dict[str, Any] | None = None,
) -> int:
    """Append one event; returns its id."""
    return append_events(session, job_id, [NewEvent(type, message, level, data or {})])[0]


def list_events(session: Session, job_id: str, *, after: int | None, limit: int) -> Page[JobEvent]:
    """Oldest first, strictly after event id `after`."""
    stmt = select(JobEvent).where(JobEvent.job_id == job_id)
    return paginate(session, stmt, key=JobEvent.seq, after=after, limit=limit, newest_first=False)


def has_event(session: Session, job_id: str, *, after: int, type: str, created_at: datetime) -> bool:
    """Whether an event of `type` that happened at `created_at` was appended after event id `after`: how
    a writer whose commit failed without an answer learns whether it landed all the same."""
    stmt = select(JobEvent.seq).where(
        JobEvent.job_id == job_id,
        JobEvent.seq > after,
        JobEvent.type == type,
        JobEvent.created_at == created_at,
    )
    return session.execute(stmt.limit(1)).first() is not None

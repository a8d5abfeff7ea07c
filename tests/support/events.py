"""Reading a job's recorded events."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from core.models import JobEvent
from core.repositories import events as event_repo


def events_of(session: Session, job_id: str, type_: str) -> list[JobEvent]:
    """The job's events of type `type_` (of its first 500), oldest first."""
    return [
        e for e in event_repo.list_events(session, job_id, after=None, limit=500).items if e.type == type_
    ]


def progress(session: Session, job_id: str) -> list[tuple[Any, ...]]:
    """(ready, generated, reused) of each preparing event."""
    return [
        (e.data["ready"], e.data["generated"], e.data["reused"])
        for e in events_of(session, job_id, "preparing")
    ]

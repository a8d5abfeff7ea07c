"""Reading a job's recorded events."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from core.models import JobEvent
from core.repositories import events as event_repo
from core.repositories.pagination import MAX_LIMIT


def events_of(session: Session, job_id: str, type_: str) -> list[JobEvent]:
    """Every one of the job's events of type `type_`, oldest first, read page by page (a page holds at
    most the repository's MAX_LIMIT, which a long job's events outnumber)."""
    found: list[JobEvent] = []
    after: int | None = None
    while True:
        page = event_repo.list_events(session, job_id, after=after, limit=MAX_LIMIT)
        found.extend(e for e in page.items if e.type == type_)
        if not page.has_more:
            return found
        after = page.items[-1].seq


def progress(session: Session, job_id: str) -> list[tuple[Any, ...]]:
    """(ready, generated, reused) of each preparing event."""
    return [
        (e.data["ready"], e.data["generated"], e.data["reused"])
        for e in events_of(session, job_id, "preparing")
    ]

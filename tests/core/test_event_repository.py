import pytest
from sqlalchemy.orm import Session

from core.db import Database
from core.repositories import events as event_repo
from core.repositories.events import NewEvent
from tests.support.factories import create_job


def test_event_ids_increase_per_job_across_batches_and_writers(database: Database) -> None:
    with database.session_scope() as s:
        a, b = create_job(s).id, create_job(s).id
    with database.session_scope() as s:
        assert event_repo.append_events(s, a, [NewEvent("started"), NewEvent("step", data={"step": 1})]) == [
            1,
            2,
        ]
        assert event_repo.append_event(s, b, "started") == 1
    with database.session_scope() as s:
        assert event_repo.append_event(s, a, "cancel_requested", level="warning") == 3


def test_events_page_oldest_first_after_a_cursor(session: Session) -> None:
    job = create_job(session)
    event_repo.append_events(session, job.id, [NewEvent("step", f"step {i}") for i in range(5)])
    page = event_repo.list_events(session, job.id, after=None, limit=2)
    assert [e.seq for e in page.items] == [1, 2] and page.has_more
    page = event_repo.list_events(session, job.id, after=2, limit=10)
    assert [e.message for e in page.items] == ["step 2", "step 3", "step 4"] and not page.has_more


def test_appending_to_an_unknown_job_fails(session: Session) -> None:
    with pytest.raises(LookupError, match="job_missing"):
        event_repo.append_event(session, "job_missing", "started")

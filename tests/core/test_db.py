"""The transaction boundary on both databases: nothing a transaction writes is seen, or kept, before it
commits, savepoints included."""

from __future__ import annotations

from sqlalchemy.orm import Session

from core.db import Database, rollback
from core.models import Job
from core.repositories import jobs as job_repo
from tests.support.factories import create_job


def test_a_row_written_under_a_savepoint_is_seen_only_once_its_transaction_commits(
    database: Database,
) -> None:
    # SQLite under pysqlite once opened a transaction of its own for a leading SAVEPOINT, which RELEASE
    # committed: a job created under `begin_nested` was visible, and kept, before its request ended.
    with database.sessions() as session:
        with session.begin_nested():
            job_id = create_job(session).id
        with database.sessions() as other:
            assert job_repo.get_job_any_tenant(other, job_id) is None, "seen before the commit"
        rollback(session)
    with database.sessions() as other:
        assert job_repo.get_job_any_tenant(other, job_id) is None, "kept though rolled back"


def test_autocommit_reads_see_each_commit_at_once(database: Database, session: Session) -> None:
    with database.read_sessions() as reader:
        assert reader.query(Job).count() == 0
        create_job(session)
        session.commit()
        assert reader.query(Job).count() == 1

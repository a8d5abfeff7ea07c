import pytest
from sqlalchemy.orm import Session

from core.db import Database
from core.repositories import jobs as job_repo
from tests.support.factories import create_job, create_tenant


def test_only_one_worker_wins_the_claim(session: Session) -> None:
    job = create_job(session)
    session.commit()
    assert job_repo.claim_job(session, job.id, worker_id="w1")
    assert not job_repo.claim_job(session, job.id, worker_id="w2")
    session.commit()
    job = job_repo.get_job_any_tenant(session, job.id)
    assert job is not None
    assert (job.status, job.worker_id, job.attempts) == ("running", "w1", 1)
    assert job.started_at is not None and job.heartbeat_at is not None


def test_claim_seen_by_a_second_session_blocks_it(database: Database) -> None:
    with database.session_scope() as s:
        job_id = create_job(s).id
    with database.session_scope() as s:
        assert job_repo.claim_job(s, job_id, worker_id="w1")
    with database.session_scope() as s:
        assert not job_repo.claim_job(s, job_id, worker_id="w2")


def test_cancel_of_a_queued_job_is_immediate_and_it_cannot_be_claimed(session: Session) -> None:
    job = create_job(session)
    assert job_repo.request_cancel(session, job.id) == "cancelled"
    assert job_repo.request_cancel(session, job.id) == "cancelled"
    assert not job_repo.claim_job(session, job.id, worker_id="w1")
    refreshed = job_repo.get_job_any_tenant(session, job.id)
    assert refreshed is not None and refreshed.finished_at is not None


def test_cancel_of_a_running_job_asks_the_worker_via_heartbeat(session: Session) -> None:
    job = create_job(session)
    job_repo.claim_job(session, job.id, worker_id="w1")
    assert job_repo.heartbeat(session, job.id, worker_id="w1") == "running"
    assert job_repo.request_cancel(session, job.id) == "cancelling"
    assert job_repo.heartbeat(session, job.id, worker_id="w1") == "cancelling"
    assert job_repo.heartbeat(session, job.id, worker_id="someone-else") is None
    assert job_repo.finish_job(session, job.id, status="cancelled", worker_id="w1")
    assert job_repo.get_status(session, job.id) == "cancelled"


def test_finish_only_leaves_running_states_and_records_the_error(session: Session) -> None:
    job = create_job(session)
    assert not job_repo.finish_job(session, job.id, status="failed")
    job_repo.claim_job(session, job.id, worker_id="w1")
    assert not job_repo.finish_job(session, job.id, status="failed", worker_id="w2")
    assert job_repo.finish_job(session, job.id, status="failed", error_code="oom", error_message="CUDA OOM")
    assert not job_repo.finish_job(session, job.id, status="succeeded")
    done = job_repo.get_job_any_tenant(session, job.id)
    assert done is not None
    assert (done.status, done.error_code, done.error_message) == ("failed", "oom", "CUDA OOM")


def test_requeue_returns_a_running_job_to_the_queue_and_a_cancelling_one_to_cancelled(
    session: Session,
) -> None:
    running, cancelling = create_job(session), create_job(session)
    for job in (running, cancelling):
        job_repo.claim_job(session, job.id, worker_id="w1")
    job_repo.request_cancel(session, cancelling.id)
    assert job_repo.requeue_job(session, running.id, worker_id="w1")
    assert job_repo.requeue_job(session, cancelling.id, worker_id="w1")
    assert job_repo.get_status(session, running.id) == "queued"
    assert job_repo.get_status(session, cancelling.id) == "cancelled"
    assert job_repo.claim_job(session, running.id, worker_id="w2")


def test_progress_is_recorded(session: Session) -> None:
    job = create_job(session)
    job_repo.update_progress(
        session, job.id, step=3, total_steps=10, eta_seconds=7.5, latest_metrics={"loss": 0.2}
    )
    job_repo.update_progress(session, job.id, step=4, total_steps=10, eta_seconds=6.0)
    seen = job_repo.get_job_any_tenant(session, job.id)
    assert seen is not None
    assert (seen.step, seen.eta_seconds, seen.latest_metrics) == (4, 6.0, {"loss": 0.2})


def test_list_is_newest_first_filtered_and_paginated_per_tenant(session: Session) -> None:
    tenant, other = create_tenant(session), create_tenant(session)
    ids = [create_job(session, tenant_id=tenant.id).id for _ in range(5)]
    create_job(session, tenant_id=other.id)
    job_repo.request_cancel(session, ids[0])

    first = job_repo.list_jobs(session, tenant_id=tenant.id, status=None, limit=3, after=None)
    assert [j.id for j in first.items] == ids[::-1][:3] and first.has_more
    rest = job_repo.list_jobs(session, tenant_id=tenant.id, status=None, limit=3, after=first.items[-1].id)
    assert [j.id for j in rest.items] == ids[::-1][3:] and not rest.has_more
    cancelled = job_repo.list_jobs(session, tenant_id=tenant.id, status="cancelled", limit=10, after=None)
    assert [j.id for j in cancelled.items] == [ids[0]]
    assert job_repo.get_job(session, ids[0], tenant_id=other.id) is None


def test_a_job_is_read_with_its_tenant_unless_the_caller_says_otherwise_by_name(session: Session) -> None:
    tenant, other = create_tenant(session), create_tenant(session)
    job = create_job(session, tenant_id=tenant.id)
    with pytest.raises(TypeError, match="tenant_id"):
        job_repo.get_job(session, job.id)  # type: ignore[call-arg]
    assert job_repo.get_job(session, job.id, tenant_id=other.id) is None
    assert job_repo.get_job(session, job.id, tenant_id=tenant.id) is job
    assert job_repo.get_job_any_tenant(session, job.id) is job


def test_json_columns_read_back_exactly_as_written_in_both_kinds_of_session(database: Database) -> None:
    metadata = {
        "nested": {"list": [1, 2.5, None, True, "ü ✓ 猫"], "empty": {}},
        "big": 12345678901234567890123,
        "float": 0.30000000000000004,
        "negative_zero": -0.0,
        "escaped": 'quote " backslash \\ newline \n',
    }
    with database.session_scope() as s:
        job_id = create_job(s, metadata_=metadata, latest_metrics={"loss": 1e-300, "lr": 3e-5}).id
    for sessions in (database.sessions, database.read_sessions):
        with sessions() as s:
            job = job_repo.get_job_any_tenant(s, job_id)
            assert job is not None
            assert job.metadata_ == metadata
            assert repr(job.metadata_["float"]) == "0.30000000000000004"
            assert repr(job.metadata_["negative_zero"]) == "-0.0"
            assert job.latest_metrics == {"loss": 1e-300, "lr": 3e-5}

"""Jobs: creation and lookup for the API; claim, heartbeat, progress, cancel and finish for the worker.

Every state change is one conditional UPDATE whose WHERE clause names the states it may leave, so two
processes racing on the same row cannot both win (the loser sees `False`). Only core.lifecycle calls the
ones that change `status` (claim_job, request_cancel, finish_job, requeue_job): a transition also writes
its event, its webhooks and its task, and the lifecycle does them together.

A job is read with its tenant (`get_job(..., tenant_id=)`): the API never serves another tenant's job.
The worker side, which reaches a job by the id in its message, says so by name (`get_job_any_tenant`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import CursorResult, Update, bindparam, func, select, update
from sqlalchemy.orm import Session

from core.models import FINISHED_STATUSES, HELD_STATUSES, Job, JobStatus, utcnow
from core.repositories.pagination import Page, paginate


def add_job(session: Session, job: Job) -> Job:
    """Insert a new job (core.lifecycle.queue sets it queued)."""
    session.add(job)
    session.flush()
    return job


# Built once: composing a select from ORM attributes costs a quarter of a job read's CPU.
_JOB = select(Job).where(Job.id == bindparam("job_id"))
_TENANT_JOB = _JOB.where(Job.tenant_id == bindparam("tenant_id"))


def get_job(session: Session, job_id: str, *, tenant_id: str) -> Job | None:
    """The tenant's job, or None (also for another tenant's)."""
    return session.scalar(_TENANT_JOB, {"job_id": job_id, "tenant_id": tenant_id})


def get_job_any_tenant(session: Session, job_id: str) -> Job | None:
    """The job whoever owns it, or None: for the worker side (a task, the webhook sender, the lifecycle),
    which reaches a job by the id in its message, never for a request."""
    return session.scalar(_JOB, {"job_id": job_id})


def get_job_by_idempotency_key(session: Session, *, tenant_id: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


def list_jobs(
    session: Session, *, tenant_id: str, status: JobStatus | None, limit: int, after: str | None
) -> Page[Job]:
    """Newest first, optionally only those in `status`."""
    stmt = select(Job).where(Job.tenant_id == tenant_id)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    return paginate(session, stmt, key=Job.id, after=after, limit=limit, newest_first=True)


def get_status(session: Session, job_id: str) -> JobStatus | None:
    """The job's current status read from the database (not from the session's identity map)."""
    return session.execute(select(Job.status).where(Job.id == job_id)).scalar_one_or_none()


def endings(session: Session, job_ids: list[str]) -> dict[str, tuple[JobStatus, str | None]]:
    """(status, error_code) of each of `job_ids` that exists."""
    rows = session.execute(select(Job.id, Job.status, Job.error_code).where(Job.id.in_(job_ids)))
    return {job_id: (status, code) for job_id, status, code in rows}


def _changed(session: Session, stmt: Update) -> bool:
    result = session.execute(stmt, execution_options={"synchronize_session": False})
    assert isinstance(result, CursorResult)
    session.expire_all()
    return result.rowcount == 1


def claim_job(session: Session, job_id: str, *, worker_id: str) -> bool:
    """queued → running for `worker_id`; False if another delivery claimed it or it was cancelled."""
    now = utcnow()
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.RUNNING, worker_id=worker_id, heartbeat_at=now, attempts=Job.attempts + 1)
    )
    won = _changed(session, stmt)
    if won:
        session.execute(
            update(Job).where(Job.id == job_id, Job.started_at.is_(None)).values(started_at=now),
            execution_options={"synchronize_session": False},
        )
    return won


def heartbeat(session: Session, job_id: str, *, worker_id: str) -> JobStatus | None:
    """Stamp the heartbeat; returns the job's status (`cancelling` means stop), or None if the job is no
    longer this worker's."""
    stmt = update(Job).where(Job.id == job_id, Job.worker_id == worker_id).values(heartbeat_at=utcnow())
    if not _changed(session, stmt):
        return None
    return get_status(session, job_id)


def update_progress(
    session: Session,
    job_id: str,
    *,
    step: int,
    total_steps: int,
    eta_seconds: float | None,
    latest_metrics: dict[str, float] | None = None,
) -> None:
    """Record progress of a running job (`latest_metrics` None keeps the previous ones)."""
    values: dict[str, Any] = {"step": step, "total_steps": total_steps, "eta_seconds": eta_seconds}
    if latest_metrics is not None:
        values["latest_metrics"] = latest_metrics
    _changed(session, update(Job).where(Job.id == job_id).values(**values))


def request_cancel(session: Session, job_id: str) -> JobStatus | None:
    """queued → cancelled at once, running → cancelling; other states unchanged. Returns the new status."""
    now = utcnow()
    queued = update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED)
    if not _changed(session, queued.values(status=JobStatus.CANCELLED, finished_at=now, eta_seconds=None)):
        running = update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING)
        _changed(session, running.values(status=JobStatus.CANCELLING))
    return get_status(session, job_id)


def finish_job(
    session: Session,
    job_id: str,
    *,
    status: JobStatus,
    worker_id: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> bool:
    """running/cancelling → succeeded | failed | cancelled; False if the job was not running (or, with
    `worker_id`, not this worker's)."""
    if status not in FINISHED_STATUSES:
        raise ValueError(f"finish_job status must be one of {sorted(FINISHED_STATUSES)}, got {status!r}")
    stmt = update(Job).where(Job.id == job_id, Job.status.in_(HELD_STATUSES))
    if worker_id is not None:
        stmt = stmt.where(Job.worker_id == worker_id)
    values = {"error_code": error_code, "error_message": error_message, "eta_seconds": None}
    return _changed(session, stmt.values(status=status, finished_at=utcnow(), **values))


def requeue_job(
    session: Session, job_id: str, *, worker_id: str | None = None, stale_before: datetime | None = None
) -> bool:
    """running → queued (its worker is shutting down, or, with `stale_before`, stopped heartbeating
    before then); a job being cancelled is cancelled instead. False if the job was in neither state."""
    stmt = update(Job).where(Job.id == job_id)
    if worker_id is not None:
        stmt = stmt.where(Job.worker_id == worker_id)
    if stale_before is not None:
        stmt = stmt.where(Job.heartbeat_at < stale_before)
    running = stmt.where(Job.status == JobStatus.RUNNING)
    if _changed(session, running.values(status=JobStatus.QUEUED, worker_id=None, heartbeat_at=None)):
        return True
    cancelling = stmt.where(Job.status == JobStatus.CANCELLING)
    cancelling = cancelling.values(status=JobStatus.CANCELLED, finished_at=utcnow())
    return _changed(session, cancelling)


def count_loss(
    session: Session, job_id: str, *, worker_id: str | None = None, stale_before: datetime | None = None
) -> bool:
    """Count one death of the training process of a held job (running or cancelling), only if
    `worker_id` holds it or (with `stale_before`) its heartbeat is older than that. The UPDATE locks the
    row, so what the transaction does next cannot race another worker's take-back. False if not held so."""
    stmt = update(Job).where(Job.id == job_id, Job.status.in_(HELD_STATUSES))
    if worker_id is not None:
        stmt = stmt.where(Job.worker_id == worker_id)
    if stale_before is not None:
        stmt = stmt.where(Job.heartbeat_at < stale_before)
    return _changed(session, stmt.values(worker_losses=Job.worker_losses + 1))


def stale_job_ids(session: Session, *, stale_before: datetime) -> list[str]:
    """Jobs a worker holds (running or cancelling) whose heartbeat is older than `stale_before`."""
    stmt = select(Job.id).where(Job.status.in_(HELD_STATUSES), Job.heartbeat_at < stale_before)
    return list(session.scalars(stmt.order_by(Job.id)))


def queued_job_ids(session: Session, *, created_before: datetime, queue: str | None = None) -> list[str]:
    """Jobs still waiting for a worker that were created before `created_before` (only those routed to
    `queue`, if given), oldest first."""
    stmt = select(Job.id).where(Job.status == JobStatus.QUEUED, Job.created_at < created_before)
    if queue is not None:
        stmt = stmt.where(Job.queue == queue)
    return list(session.scalars(stmt.order_by(Job.created_at)))


def queued_counts(session: Session) -> dict[str, int]:
    """How many jobs wait on each queue (queues with none are absent)."""
    stmt = select(Job.queue, func.count()).where(Job.status == JobStatus.QUEUED).group_by(Job.queue)
    return {queue: count for queue, count in session.execute(stmt).tuples()}


@dataclass(frozen=True)
class Route:
    """Where a job's message goes: its queue, and its priority there (0-9, higher first)."""

    queue: str
    priority: int


def get_route(session: Session, job_id: str) -> Route:
    """The job's queue and priority; KeyError if there is no such job."""
    row = session.execute(select(Job.queue, Job.priority).where(Job.id == job_id)).one_or_none()
    if row is None:
        raise KeyError(job_id)
    return Route(queue=row.queue, priority=row.priority)

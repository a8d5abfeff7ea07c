"""The job lifecycle: the only code that changes a job's status.

```
queue ──► queued ──claim──► running ──finish──► succeeded | failed | cancelled
            │                 │  ▲ └─request_cancel─► cancelling ──finish / requeue──► cancelled
            │                 └──┴─requeue (its worker stops or is lost) ─► queued
            └─request_cancel─► cancelled
```

A job whose training process dies (`take_back_lost`) is requeued like one whose worker stops, but the
loss is counted: the loss that reaches the limit fails it (`worker_lost_repeatedly`) instead.

Each transition does, in the caller's transaction: the conditional UPDATE (its WHERE clause names the
states it may leave, so of two processes racing on one row only one wins, see core/repositories/jobs.py),
the event row that says so in the job's log, the webhook deliveries of the hooks that asked for it
(core/webhooks/outbox.py) and, where the job is to be trained, the training task sent once the
transaction commits (`core.db.after_commit`), so a worker never gets a message for a row it cannot see.
A transition that loses its race writes nothing and says so in its return value.

`producer` is the Celery app that sends tasks (the API's or the worker's).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from celery import Celery
from sqlalchemy.orm import Session

from core.db import after_commit
from core.job_errors import JobErrorCode
from core.models import FINISHED_STATUSES, EventLevel, Job, JobStatus, WebhookEvent
from core.queue import enqueue_train_job
from core.repositories import events as event_repo
from core.repositories import jobs as job_repo
from core.webhooks import outbox

_ENDING_WEBHOOKS: dict[JobStatus, WebhookEvent] = {
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}


@dataclass(frozen=True)
class JobFailure:
    """Why a job failed: a catalogued code and a message naming what went wrong."""

    code: JobErrorCode
    message: str


@dataclass(frozen=True)
class RequeueReason:
    """Why a held job goes back to the queue, in the words of its event log: `requeued` when it does,
    `cancelled` (at `cancelled_level`) when a cancel was pending and the job ends cancelled instead.
    `lost` is the cause when its training process died (counted by `take_back_lost`); None for a
    graceful hand-back, which costs the job nothing."""

    requeued: str
    cancelled: str
    cancelled_level: EventLevel
    lost: str | None = None


WORKER_SHUTTING_DOWN = RequeueReason(
    requeued="requeued: its worker is shutting down; the next one resumes from the checkpoint",
    cancelled="job cancelled",
    cancelled_level="info",
)


def heartbeat_lost(timeout_seconds: float) -> RequeueReason:
    """The reason for a job whose worker stopped heartbeating for over `timeout_seconds` (it died)."""
    return process_lost(f"its worker stopped heartbeating for over {timeout_seconds:.0f} s")


def process_lost(cause: str) -> RequeueReason:
    """The reason for a job whose training process died of `cause` (e.g. "its training process was
    killed by SIGKILL: out of memory ...")."""
    return RequeueReason(
        requeued=f"requeued: {cause}", cancelled=f"cancelled: {cause}", cancelled_level="warning", lost=cause
    )


def queue(session: Session, job: Job, *, producer: Celery) -> Job:
    """Insert the new `job` as queued, log it, and send its training task once the transaction commits.
    Raises IntegrityError (with nothing written) if its Idempotency-Key is taken: a concurrent create won."""
    job.status = JobStatus.QUEUED
    with session.begin_nested():
        job_repo.add_job(session, job)
    message = f"job queued on {job.spec['base_model']} ({job.spec['method']})"
    event_repo.append_event(session, job.id, "queued", message)
    _send_after_commit(session, producer, job.id)
    return job


def claim(session: Session, job_id: str, *, worker_id: str, producer: Celery) -> Job | None:
    """queued → running for `worker_id`, logged; the `started` webhook on the first attempt only (not when
    a requeued job is picked up to resume). None if another delivery claimed it or it was cancelled."""
    if not job_repo.claim_job(session, job_id, worker_id=worker_id):
        return None
    job = job_repo.get_job_any_tenant(session, job_id)
    assert job is not None, "a claimed job exists"
    event_repo.append_event(session, job_id, "running", f"picked up by {worker_id} (attempt {job.attempts})")
    if job.attempts == 1:
        outbox.record_event(session, job_id, "started", producer=producer)
    return job


def request_cancel(session: Session, job_id: str, *, producer: Celery) -> JobStatus | None:
    """queued → cancelled at once (with the `cancelled` webhook), running → cancelling (its worker stops
    and ends it); logged when it changed anything. Returns the status now (unchanged for a finished job,
    or a second request); None if there is no such job."""
    before = job_repo.get_status(session, job_id)
    after = job_repo.request_cancel(session, job_id)
    if before is None or after is None or after == before:
        return after
    event_repo.append_event(session, job_id, "cancel_requested", f"cancel requested: {before} → {after}")
    if after == JobStatus.CANCELLED:
        outbox.record_event(session, job_id, "cancelled", producer=producer)
    return after


def requeue(
    session: Session,
    job_id: str,
    *,
    reason: RequeueReason,
    producer: Celery,
    worker_id: str | None = None,
    stale_before: datetime | None = None,
) -> JobStatus | None:
    """running → queued, its training task sent again once the transaction commits (the next worker
    resumes from the newest checkpoint); cancelling → cancelled (the cancel is honoured, with its webhook).
    Only if `worker_id` holds it, or (with `stale_before`) its heartbeat is older than that. Returns the
    new status, or None if the job was in neither state (or not held as asked): nothing is written."""
    if not job_repo.requeue_job(session, job_id, worker_id=worker_id, stale_before=stale_before):
        return None
    status = job_repo.get_status(session, job_id)
    if status == JobStatus.QUEUED:
        event_repo.append_event(session, job_id, "requeued", reason.requeued, level="warning")
        _send_after_commit(session, producer, job_id)
    else:
        event_repo.append_event(session, job_id, "cancelled", reason.cancelled, level=reason.cancelled_level)
        outbox.record_event(session, job_id, "cancelled", producer=producer)
    return status


def take_back_lost(
    session: Session,
    job_id: str,
    *,
    reason: RequeueReason,
    producer: Celery,
    max_losses: int,
    worker_id: str | None = None,
    stale_before: datetime | None = None,
) -> JobStatus | None:
    """A held job whose training process died (`reason.lost`): count the loss, then requeue it (or honour
    its cancel) as `requeue` does, unless this was loss number `max_losses`: then it fails with
    worker_lost_repeatedly naming the count and this last cause, instead of dying again after another
    full reload. Held as `requeue` asks; returns the new status, or None (nothing written)."""
    if reason.lost is None:
        raise ValueError("take_back_lost is for a job whose process died; requeue hands one back")
    if not job_repo.count_loss(session, job_id, worker_id=worker_id, stale_before=stale_before):
        return None
    job = job_repo.get_job_any_tenant(session, job_id)
    assert job is not None and job.worker_id is not None, "a held job has its worker"
    if job.status != JobStatus.RUNNING or job.worker_losses < max_losses:
        return requeue(session, job_id, reason=reason, producer=producer, worker_id=job.worker_id)
    message = (
        f"its training process died {job.worker_losses} times, each after a full reload "
        f"(MAPO_MAX_WORKER_LOSSES is {max_losses}); the last time {reason.lost}"
    )
    failure = JobFailure(JobErrorCode.WORKER_LOST_REPEATEDLY, message)
    finish(
        session, job_id, outcome=JobStatus.FAILED, worker_id=job.worker_id, producer=producer, failure=failure
    )
    return JobStatus.FAILED


def finish(
    session: Session,
    job_id: str,
    *,
    outcome: JobStatus,
    worker_id: str,
    producer: Celery,
    failure: JobFailure | None = None,
) -> bool:
    """running/cancelling → `outcome` (succeeded, failed with `failure`, or cancelled), logged, with its
    webhook. False, writing nothing, if the job is not held by `worker_id` (requeued while it was silent,
    perhaps running elsewhere now, or ended meanwhile)."""
    if outcome not in FINISHED_STATUSES:
        raise ValueError(f"a job finishes as one of {sorted(FINISHED_STATUSES)}, not {outcome!r}")
    if (outcome == JobStatus.FAILED) != (failure is not None):
        raise ValueError("a failed job, and only a failed one, carries a failure")
    code = failure.code if failure is not None else None
    ended = job_repo.finish_job(
        session,
        job_id,
        status=outcome,
        worker_id=worker_id,
        error_code=code,
        error_message=failure.message if failure is not None else None,
    )
    if not ended:
        return False
    text = f"job {outcome}" + (f": {code}: {failure.message}" if failure is not None else "")
    level: EventLevel = "error" if outcome == JobStatus.FAILED else "info"
    event_repo.append_event(session, job_id, outcome, text, level=level, data={"error_code": code})
    outbox.record_event(session, job_id, _ENDING_WEBHOOKS[outcome], producer=producer)
    return True


def _send_after_commit(session: Session, producer: Celery, job_id: str) -> None:
    """Send the training task to the job's queue at its priority once this transaction commits."""
    route = job_repo.get_route(session, job_id)
    after_commit(
        session, lambda: enqueue_train_job(producer, job_id, queue=route.queue, priority=route.priority)
    )

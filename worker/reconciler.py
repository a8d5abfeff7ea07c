"""The database, not the broker, is the source of truth: find jobs whose worker died and requeue them.

A worker that is killed (SIGKILL, OOM, a lost host) stops heartbeating and leaves its job `running`; no
broker will redeliver it soon (the embedded one never does, Redis only after its visibility timeout).
Every worker runs this check at start and then periodically: such jobs go back to `queued` with a fresh
message, and the next run resumes from their newest checkpoint. A job that was being cancelled is
cancelled instead.

The same check compares, queue by queue, the messages waiting on the broker with the jobs `queued` in the
database: when the broker holds fewer (a Redis without persistence restarted, an enqueue failed after its
commit), every job of that queue that has waited longer than the heartbeat timeout is sent again. A
duplicate is harmless: the first delivery claims the row, the others find it claimed and do nothing.
Every worker checks every queue, so jobs of a GPU class whose workers are all gone are kept too.

Each tick also stamps this worker's row in `workers` (its advertisement: queues, GPUs), so the API can
show which workers are alive, and removes this host's local copies of the outputs of jobs that ended
without their worker cleaning up (killed, lost, taken over; `worker.staging.sweep_work_dir`).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from celery import Celery

from core.db import Database, after_commit
from core.models import utcnow
from core.queue import enqueue_train_job, waiting_message_count
from core.repositories import events as event_repo
from core.repositories import jobs as job_repo
from core.repositories import workers as worker_repo
from core.webhooks import outbox as webhook_outbox
from worker.staging import sweep_work_dir

log = logging.getLogger(__name__)


def reconcile(db: Database, producer: Celery, *, heartbeat_timeout_seconds: float) -> list[str]:
    """Requeue (or finish cancelling) every job whose heartbeat is stale; returns their ids."""
    stale_before = utcnow() - timedelta(seconds=heartbeat_timeout_seconds)
    with db.session_scope() as session:
        candidates = job_repo.stale_job_ids(session, stale_before=stale_before)
    why = f"its worker stopped heartbeating for over {heartbeat_timeout_seconds:.0f} s"
    return [job_id for job_id in candidates if _take_back(db, producer, job_id, stale_before, why)]


def _take_back(db: Database, producer: Celery, job_id: str, stale_before: datetime, why: str) -> bool:
    with db.session_scope() as session:
        # Conditional on the heartbeat still being stale: a worker that just came back keeps its job.
        if not job_repo.requeue_job(session, job_id, stale_before=stale_before):
            return False
        status = job_repo.get_status(session, job_id)
        if status == "queued":
            event_repo.append_event(session, job_id, "requeued", f"requeued: {why}", level="warning")
            route = job_repo.get_route(session, job_id)
            after_commit(session, lambda: _send(producer, job_id, route))
        else:
            event_repo.append_event(session, job_id, "cancelled", f"cancelled: {why}", level="warning")
            webhook_outbox.record_event(session, job_id, "cancelled", producer=producer)
    log.warning("job %s: its worker was lost; now %s", job_id, status)
    return True


def _send(producer: Celery, job_id: str, route: job_repo.Route) -> None:
    enqueue_train_job(producer, job_id, queue=route.queue, priority=route.priority)


def resend_lost_jobs(db: Database, producer: Celery, *, waited_seconds: float) -> list[str]:
    """For each queue: if the broker holds fewer messages than there are jobs queued on it, some were
    lost (a Redis without persistence restarted, an enqueue failed after its commit): send a fresh message
    for every job of that queue queued more than `waited_seconds` ago. Returns their ids; nothing is sent
    while the counts agree, so a long but healthy queue is never flooded with duplicates."""
    with db.session_scope() as session:
        counts = job_repo.queued_counts(session)
    resent: list[str] = []
    for queue, queued in sorted(counts.items()):
        if waiting_message_count(producer, queue) < queued:
            resent += _resend_queue(db, producer, queue, waited_seconds)
    return resent


def _resend_queue(db: Database, producer: Celery, queue: str, waited_seconds: float) -> list[str]:
    waited_before = utcnow() - timedelta(seconds=waited_seconds)
    with db.session_scope() as session:
        waiting = job_repo.queued_job_ids(session, created_before=waited_before, queue=queue)
        routes = [job_repo.get_route(session, job_id) for job_id in waiting]
    for job_id, route in zip(waiting, routes, strict=True):
        _send(producer, job_id, route)
    if waiting:
        lost = ", ".join(waiting)
        log.warning("re-sent %d job(s) of %s whose message was lost: %s", len(waiting), queue, lost)
    return waiting


def advertise(db: Database, advertisement: dict[str, Any]) -> None:
    """Stamp this worker's row in `workers`, writing it whole if it is missing (first tick, or deleted)."""
    with db.session_scope() as session:
        if not worker_repo.touch_worker(session, advertisement["id"]):
            worker_repo.register_worker(session, advertisement)


def start_reconciler(
    db: Database,
    producer: Celery,
    *,
    heartbeat_timeout_seconds: float,
    interval_seconds: float,
    advertisement: dict[str, Any] | None = None,
    work_dir: Path | None = None,
) -> threading.Event:
    """In a daemon thread, now and every `interval_seconds`: stamp this worker's `advertisement` (if
    given), requeue jobs whose worker died (`reconcile`), re-send queued jobs whose message was lost
    (`resend_lost_jobs`) and remove this host's local outputs of ended jobs from `work_dir` (if given,
    `sweep_work_dir`); set the returned event to stop it."""
    stop = threading.Event()

    def loop() -> None:
        while True:
            try:
                if advertisement is not None:
                    advertise(db, advertisement)
                reconcile(db, producer, heartbeat_timeout_seconds=heartbeat_timeout_seconds)
                resend_lost_jobs(db, producer, waited_seconds=heartbeat_timeout_seconds)
                if work_dir is not None:
                    sweep_work_dir(db, work_dir)
            except Exception:
                log.exception("reconciling jobs failed; trying again in %.0f s", interval_seconds)
            if stop.wait(interval_seconds):
                return

    threading.Thread(target=loop, name="mapo-reconciler", daemon=True).start()
    return stop

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
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from celery import Celery

from core import lifecycle
from core.db import Database
from core.models import utcnow
from core.queue import enqueue_train_job, waiting_message_count
from core.repositories import jobs as job_repo
from core.repositories import workers as worker_repo
from worker.staging import sweep_work_dir

log = logging.getLogger(__name__)


def reconcile(
    db: Database, producer: Celery, *, heartbeat_timeout_seconds: float, max_worker_losses: int
) -> list[str]:
    """Requeue (or finish cancelling) every job whose heartbeat is stale, counting the loss (the one that
    reaches `max_worker_losses` fails it: `lifecycle.take_back_lost`); returns their ids."""
    stale_before = utcnow() - timedelta(seconds=heartbeat_timeout_seconds)
    with db.session_scope() as session:
        candidates = job_repo.stale_job_ids(session, stale_before=stale_before)
    reason = lifecycle.heartbeat_lost(heartbeat_timeout_seconds)
    taken = [
        job_id
        for job_id in candidates
        if _take_back(db, producer, job_id, reason, max_worker_losses, stale_before=stale_before)
    ]
    return taken


def _take_back(
    db: Database,
    producer: Celery,
    job_id: str,
    reason: lifecycle.RequeueReason,
    max_worker_losses: int,
    *,
    stale_before: datetime | None = None,
    worker_id: str | None = None,
) -> bool:
    with db.session_scope() as session:
        # Conditional on the heartbeat still being stale (or on `worker_id` still holding the job): a
        # worker that just came back keeps its job.
        status = lifecycle.take_back_lost(
            session,
            job_id,
            reason=reason,
            producer=producer,
            max_losses=max_worker_losses,
            stale_before=stale_before,
            worker_id=worker_id,
        )
    if status is None:
        return False
    log.warning("job %s: %s; now %s", job_id, reason.lost, status)
    return True


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
    # Not a transition: the jobs stay queued, and a duplicate message is a no-op when delivered.
    for job_id, route in zip(waiting, routes, strict=True):
        enqueue_train_job(producer, job_id, queue=route.queue, priority=route.priority)
    if waiting:
        lost = ", ".join(waiting)
        log.warning("re-sent %d job(s) of %s whose message was lost: %s", len(waiting), queue, lost)
    return waiting


def advertise(db: Database, advertisement: dict[str, Any]) -> None:
    """Stamp this worker's row in `workers`, writing it whole if it is missing (first tick, or deleted)."""
    with db.session_scope() as session:
        if not worker_repo.touch_worker(session, advertisement["id"]):
            worker_repo.register_worker(session, advertisement)


@dataclass
class Reconciler:
    """The reconciler of one worker's main process: what it checks (`tick`), how often, and the thread
    that runs it. `worker_id` is the Celery node name its `workers` row goes by."""

    db: Database
    producer: Celery
    worker_id: str
    heartbeat_timeout_seconds: float
    interval_seconds: float
    max_worker_losses: int
    advertisement: dict[str, Any] | None = None
    work_dir: Path | None = None
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    def tick(self) -> None:
        """Stamp this worker's `advertisement` (if given), requeue jobs whose worker died (`reconcile`),
        re-send queued jobs whose message was lost (`resend_lost_jobs`) and remove this host's local
        outputs of ended jobs from `work_dir` (if given, `sweep_work_dir`)."""
        if self.advertisement is not None:
            advertise(self.db, self.advertisement)
        reconcile(
            self.db,
            self.producer,
            heartbeat_timeout_seconds=self.heartbeat_timeout_seconds,
            max_worker_losses=self.max_worker_losses,
        )
        resend_lost_jobs(self.db, self.producer, waited_seconds=self.heartbeat_timeout_seconds)
        if self.work_dir is not None:
            sweep_work_dir(self.db, self.work_dir)

    def take_back_from_dead_child(self, job_id: str, cause: str) -> bool:
        """A pool child of this worker died running `job_id` of `cause`: take the job back now, the loss
        counted (`lifecycle.take_back_lost`), rather than after the heartbeat timeout. Only while one of
        this worker's processes still holds it; whether it did."""
        with self.db.session_scope() as session:
            job = job_repo.get_job_any_tenant(session, job_id)
            held_by = None if job is None else job.worker_id
        if held_by is None or not held_by.startswith(f"{self.worker_id}:"):
            return False
        reason = lifecycle.process_lost(cause)
        return _take_back(self.db, self.producer, job_id, reason, self.max_worker_losses, worker_id=held_by)

    def start(self) -> Reconciler:
        """`tick` now and every `interval_seconds` in a daemon thread, until `stop`."""
        threading.Thread(target=self._loop, name="mapo-reconciler", daemon=True).start()
        return self

    def stop(self) -> None:
        """End the thread and mark this worker stopped in `workers` (best effort: a row not stamped for
        the heartbeat timeout counts as gone anyway)."""
        self._stop.set()
        try:
            with self.db.session_scope() as session:
                worker_repo.mark_stopped(session, self.worker_id)
        except Exception:
            log.warning("could not mark worker %s stopped", self.worker_id, exc_info=True)

    def forget_after_fork(self) -> None:
        """In a forked pool child: drop the inherited connections without closing them (they are the
        main process's) and never run or stop this reconciler from here."""
        self.db.engine.dispose(close=False)

    def _loop(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("reconciling jobs failed; trying again in %.0f s", self.interval_seconds)
            if self._stop.wait(self.interval_seconds):
                return

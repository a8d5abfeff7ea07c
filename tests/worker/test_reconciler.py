"""Jobs whose worker died go back to the queue and finish: the database is the source of truth."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.orm import Session

from core.models import Job, utcnow
from core.queue import make_producer
from core.repositories import events as event_repo
from core.repositories import jobs as job_repo
from core.repositories import outputs as output_repo
from core.settings import Settings
from tests.support.processes import running_worker, wait_finished
from worker.context import WorkerContext
from worker.reconciler import reconcile

# Still training, by many steps, when a test kills or stops its worker (about 0.1-0.3 s a step on CPU).
LONG_JOB_STEPS = 80


def _hold(session: Session, job: Job, *, status: str, heartbeat_age_s: float) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job.id)
        .values(status=status, worker_id="gone:1", heartbeat_at=utcnow() - timedelta(seconds=heartbeat_age_s))
    )
    session.commit()


def _status(session: Session, job_id: str) -> str | None:
    session.expire_all()
    return job_repo.get_status(session, job_id)


def test_stale_running_job_is_requeued_and_trains(
    ctx: WorkerContext, make_job: Callable[..., Job], session: Session
) -> None:
    from worker.runner import run_job

    job, fresh = make_job(max_train_steps=2), make_job(max_train_steps=2)
    _hold(session, job, status="running", heartbeat_age_s=600)
    _hold(session, fresh, status="running", heartbeat_age_s=1)
    producer = make_producer(ctx.settings)
    assert reconcile(ctx.db, producer, heartbeat_timeout_seconds=120, max_worker_losses=3) == [job.id]
    assert _status(session, job.id) == "queued" and _status(session, fresh.id) == "running"
    last = event_repo.list_events(session, job.id, after=None, limit=50).items[-1]
    assert last.type == "requeued" and last.level == "warning"
    assert run_job(job.id, ctx) == "succeeded"


def test_stale_cancelling_job_ends_cancelled(
    ctx: WorkerContext, make_job: Callable[..., Job], session: Session
) -> None:
    job = make_job()
    _hold(session, job, status="cancelling", heartbeat_age_s=600)
    assert reconcile(
        ctx.db, make_producer(ctx.settings), heartbeat_timeout_seconds=120, max_worker_losses=3
    ) == [job.id]
    assert _status(session, job.id) == "cancelled"


def test_worker_killed_mid_training_job_resumes_on_the_next_worker(
    worker_settings: Settings, make_job: Callable[..., Job], session: Session, tmp_path: Path
) -> None:
    job = make_job(max_train_steps=LONG_JOB_STEPS, checkpoint_every_n_steps=5, validation={})
    fast_reaper = {"MAPO_HEARTBEAT_TIMEOUT_SECONDS": "10", "MAPO_RECONCILE_INTERVAL_SECONDS": "1"}
    log = tmp_path / "workers.log"
    with running_worker(worker_settings, log, **fast_reaper) as first:
        from core.queue import enqueue_train_job

        enqueue_train_job(make_producer(worker_settings), job.id)
        _wait_for(lambda: [c.step for c in output_repo.list_checkpoints(session, job.id)], timeout=180)
        os.killpg(first.pid, signal.SIGKILL)  # the main process and the child training in it
        first.wait()
    log_so_far = [
        (e.type, e.message) for e in event_repo.list_events(session, job.id, after=None, limit=500).items
    ]
    assert _status(session, job.id) == "running", [x for x in log_so_far if x[0] != "step"]
    with running_worker(worker_settings, log, **fast_reaper):
        finished = wait_finished(session, job.id, timeout=240)
    assert finished.status == "succeeded", log.read_text(errors="replace")[-3000:]
    assert finished.step == LONG_JOB_STEPS
    events = event_repo.list_events(session, job.id, after=None, limit=1000).items
    assert "requeued" in [e.type for e in events]
    resumed = [e.data["resumed_from_step"] for e in events if e.type == "started"]
    assert resumed[0] == 0 and resumed[-1] > 0, resumed
    assert len(output_repo.list_artifacts(session, job.id)) == 2, "one diffusers and one kohya adapter"


def _wait_for(probe: Callable[[], object], *, timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        session_value = probe()
        if session_value:
            return session_value
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout}s")


def test_sigterm_checkpoints_and_hands_the_job_to_the_next_worker(
    worker_settings: Settings, make_job: Callable[..., Job], session: Session, tmp_path: Path
) -> None:
    from core.queue import enqueue_train_job

    job = make_job(max_train_steps=LONG_JOB_STEPS, checkpoint_every_n_steps=1000, validation={})
    log = tmp_path / "workers.log"
    with running_worker(worker_settings, log) as first:
        enqueue_train_job(make_producer(worker_settings), job.id)
        _wait_for(
            lambda: (job_repo.get_job_any_tenant(session, job.id) or job).step >= 5 or session.expire_all(),
            timeout=180,
        )
        first.send_signal(signal.SIGTERM)  # what `docker stop` and `mapo serve` send
        assert first.wait(timeout=90) == 0
    assert _status(session, job.id) == "queued", log.read_text(errors="replace")[-3000:]
    session.expire_all()
    stopped_at = (job_repo.get_job_any_tenant(session, job.id) or job).step
    assert [c.step for c in output_repo.list_checkpoints(session, job.id)] == [stopped_at], "no step lost"
    with running_worker(worker_settings, log):
        finished = wait_finished(session, job.id, timeout=240)
    assert finished.status == "succeeded" and finished.step == LONG_JOB_STEPS
    events = event_repo.list_events(session, job.id, after=None, limit=1000).items
    resumed = [e.data["resumed_from_step"] for e in events if e.type == "started"]
    assert resumed == [0, stopped_at]


def test_a_queued_job_whose_message_was_lost_is_resent_when_a_worker_starts(
    worker_settings: Settings, make_job: Callable[..., Job], session: Session, tmp_path: Path
) -> None:
    job = make_job(max_train_steps=2, validation={})  # committed, but no message was ever sent
    session.execute(update(Job).where(Job.id == job.id).values(created_at=utcnow() - timedelta(minutes=10)))
    session.commit()
    with running_worker(worker_settings, tmp_path / "worker.log", MAPO_HEARTBEAT_TIMEOUT_SECONDS="60"):
        finished = wait_finished(session, job.id, timeout=180)
    assert finished.status == "succeeded" and finished.attempts == 1


def test_queued_jobs_are_resent_only_when_the_broker_lost_their_messages(
    worker_settings: Settings, make_job: Callable[..., Job], session: Session, ctx: WorkerContext
) -> None:
    from core.queue import enqueue_train_job, waiting_message_count
    from worker.reconciler import resend_lost_jobs

    producer = make_producer(worker_settings)
    jobs = [make_job(validation={}) for _ in range(2)]
    for job in jobs:
        enqueue_train_job(producer, job.id)
    assert resend_lost_jobs(ctx.db, producer, waited_seconds=0) == [], "both messages are there"
    assert waiting_message_count(producer) == 2

    lost = make_job(validation={})  # committed, but its message never reached the broker
    resent = resend_lost_jobs(ctx.db, producer, waited_seconds=0)
    assert set(resent) == {lost.id, *(job.id for job in jobs)}
    assert waiting_message_count(producer) == 5  # duplicates are no-ops when delivered
    assert resend_lost_jobs(ctx.db, producer, waited_seconds=0) == [], "counts agree again"


def test_lost_messages_are_counted_and_resent_queue_by_queue(
    worker_settings: Settings, make_job: Callable[..., Job], session: Session, ctx: WorkerContext
) -> None:
    from core.queue import enqueue_train_job, waiting_message_count
    from worker.reconciler import resend_lost_jobs

    producer = make_producer(worker_settings)
    default, h100 = make_job(validation={}), make_job(validation={})
    session.execute(update(Job).where(Job.id == h100.id).values(queue="mapo.gpu.h100", priority=9))
    session.commit()
    enqueue_train_job(producer, default.id)  # h100's message never reached the broker
    assert resend_lost_jobs(ctx.db, producer, waited_seconds=0) == [h100.id]
    assert waiting_message_count(producer, "mapo.gpu.h100") == 1
    assert waiting_message_count(producer, "mapo.gpu") == 1, "a full queue beside it is left alone"
    assert resend_lost_jobs(ctx.db, producer, waited_seconds=0) == []


def test_a_stale_job_is_requeued_on_its_own_queue(
    ctx: WorkerContext, make_job: Callable[..., Job], session: Session
) -> None:
    from core.queue import waiting_message_count

    job = make_job()
    session.execute(update(Job).where(Job.id == job.id).values(queue="mapo.gpu.h100"))
    _hold(session, job, status="running", heartbeat_age_s=600)
    producer = make_producer(ctx.settings)
    assert reconcile(ctx.db, producer, heartbeat_timeout_seconds=120, max_worker_losses=3) == [job.id]
    assert waiting_message_count(producer, "mapo.gpu.h100") == 1
    assert waiting_message_count(producer, "mapo.gpu") == 0


def test_a_worker_process_advertises_itself_and_says_when_it_stopped(
    worker_settings: Settings, session: Session, tmp_path: Path
) -> None:
    from core.repositories import workers as worker_repo

    log = tmp_path / "worker.log"
    with running_worker(worker_settings, log, MAPO_RECONCILE_INTERVAL_SECONDS="1") as process:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not worker_repo.list_workers(session):
            session.expire_all()
            time.sleep(0.2)
        (row,) = worker_repo.list_workers(session)
        assert row.queues == ["mapo.gpu"] and row.stopped_at is None, log.read_text(errors="replace")[-2000:]
        assert row.device in ("cpu", "cuda") and (row.gpu_count > 0) == (row.device == "cuda")
        process.send_signal(signal.SIGTERM)
        try:
            returncode = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError("SIGTERM did not stop the idle worker:\n" + _tail(log)) from None
    # The graceful stop is for a child running a job: an idle pool child must not die of it (billiard
    # then forks a replacement in the middle of the pool's shutdown).
    assert returncode == 0 and "ForkPoolWorker" not in log.read_text(errors="replace"), _tail(log)
    session.expire_all()
    (row,) = worker_repo.list_workers(session)
    assert row.stopped_at is not None


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]

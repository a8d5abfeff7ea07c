"""Priorities on a real Redis broker with one real worker: while it is busy, a high-priority job sent after
a low-priority one starts first."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from core.models import Job
from core.queue import enqueue_train_job, make_producer
from core.repositories import jobs as job_repo
from core.settings import Settings
from tests.support.processes import running_worker, wait_finished, wait_until
from tests.support.servers import PrivateRedis


def _job_at(session: Session, make_job: Callable[..., Job], priority: int, **spec: object) -> Job:
    job = make_job(validation={}, **spec)
    session.execute(update(Job).where(Job.id == job.id).values(priority=priority))
    session.commit()
    return job


@pytest.mark.redis
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_high_priority_job_sent_last_starts_before_a_low_one_waiting(
    worker_settings: Settings,
    redis_broker: PrivateRedis,
    make_job: Callable[..., Job],
    session: Session,
    tmp_path: Path,
) -> None:
    settings = worker_settings.model_copy(update={"broker_url": redis_broker.url})
    producer = make_producer(settings)
    busy = _job_at(session, make_job, 0, max_train_steps=30)
    low, high = _job_at(session, make_job, 0), _job_at(session, make_job, 9)
    log = tmp_path / "worker.log"
    with running_worker(settings, log):
        enqueue_train_job(producer, busy.id, priority=0)
        wait_until(session, lambda: job_repo.get_status(session, busy.id) == "running", timeout=180)
        # the worker holds one message at a time: the rest wait
        enqueue_train_job(producer, low.id, priority=0)
        enqueue_train_job(producer, high.id, priority=9)
        finished = {job.id: wait_finished(session, job.id, timeout=300) for job in (busy, low, high)}
    text = log.read_text(errors="replace")[-3000:]
    assert all(job.status == "succeeded" for job in finished.values()), text
    started = {job_id: job.started_at for job_id, job in finished.items()}
    assert started[busy.id] < started[high.id] < started[low.id], (started, text)

"""A real Redis broker restart (keeping nothing on disk, so every message is lost) with one job running
and two queued: all three still run, once each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from core.models import Job
from core.queue import enqueue_train_job, make_producer
from core.repositories import events as event_repo
from core.repositories import jobs as job_repo
from core.settings import Settings
from tests.support.processes import running_worker, wait_until
from tests.support.servers import PrivateRedis

FAST_REAPER = {"MAPO_HEARTBEAT_TIMEOUT_SECONDS": "10", "MAPO_RECONCILE_INTERVAL_SECONDS": "1"}


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_jobs_queued_and_running_survive_a_broker_restart(
    worker_settings: Settings,
    redis_broker: PrivateRedis,
    make_job: Callable[..., Job],
    session: Session,
    tmp_path: Path,
) -> None:
    settings = worker_settings.model_copy(update={"broker_url": redis_broker.url})
    running = make_job(max_train_steps=60, checkpoint_every_n_steps=20, validation={})  # outlasts the restart
    waiting = [make_job(validation={}) for _ in range(2)]
    jobs = [running, *waiting]
    log = tmp_path / "worker.log"
    with running_worker(settings, log, **FAST_REAPER):
        producer = make_producer(settings)
        for job in jobs:
            enqueue_train_job(producer, job.id)
        wait_until(session, lambda: _reload(session, running).step >= 5, timeout=240)
        redis_broker.stop()  # the two queued messages, and the running one's, are gone
        redis_broker.start()
        wait_until(
            session,
            lambda: all((job_repo.get_job_any_tenant(session, j.id) or j).is_finished for j in jobs),
            timeout=240,
        )
    text = log.read_text(errors="replace")
    for job in jobs:
        finished = job_repo.get_job_any_tenant(session, job.id)
        assert finished is not None and finished.status == "succeeded", text[-3000:]
        assert finished.step == finished.total_steps
        types = [e.type for e in event_repo.list_events(session, job.id, after=None, limit=200).items]
        assert types.count("running") == 1 and types.count("succeeded") == 1, types


def _reload(session: Session, job: Job) -> Job:
    return job_repo.get_job_any_tenant(session, job.id) or job

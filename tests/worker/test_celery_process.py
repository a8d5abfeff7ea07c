"""A real `celery worker` process takes jobs from a real broker: Redis, and the embedded filesystem one."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from core.models import Job
from core.queue import enqueue_train_job, make_producer
from core.settings import Settings
from tests.support.processes import running_worker, wait_finished


@pytest.fixture(params=["filesystem", pytest.param("redis", marks=pytest.mark.redis)])
def broker_settings(request: pytest.FixtureRequest, worker_settings: Settings) -> Settings:
    broker = "filesystem://" if request.param == "filesystem" else request.getfixturevalue("redis_url")
    return worker_settings.model_copy(update={"broker_url": broker})


@pytest.fixture
def celery_worker(broker_settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with running_worker(broker_settings, tmp_path / "worker.log") as process:
        yield process


def test_worker_process_trains_an_enqueued_job_once(
    broker_settings: Settings,
    celery_worker: subprocess.Popen[bytes],
    make_job: Callable[..., Job],
    session: Session,
    tmp_path: Path,
) -> None:
    job = make_job(max_train_steps=2, validation={})
    producer = make_producer(broker_settings)
    enqueue_train_job(producer, job.id)
    enqueue_train_job(producer, job.id)  # a duplicate delivery must not train twice
    finished = wait_finished(session, job.id)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert finished.status == "succeeded", log
    assert finished.step == 2 and finished.attempts == 1
    assert finished.worker_id is not None and str(celery_worker.pid) != finished.worker_id.split(":")[-1]

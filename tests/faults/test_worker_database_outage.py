"""A real PostgreSQL restart under a real worker: nothing the job recorded is lost or written twice."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy.orm import Session

import migrations
from core.db import Database
from core.models import Job, JobEvent
from core.queue import enqueue_train_job, make_producer
from core.repositories import events as event_repo
from core.repositories import jobs as job_repo
from core.repositories import metrics as metric_repo
from core.repositories import outputs as output_repo
from core.settings import Settings
from core.storage import LocalStorage
from tests.support.factories import TEST_PEPPER, create_dataset, create_job, create_tenant
from tests.support.processes import running_worker
from tests.support.servers import PrivatePostgres
from tests.support.specs import FAST_SPEC
from trainer.synthetic.demo_data import make_demo_dataset

T = TypeVar("T")
# Long enough that training outlasts the outage by many steps: since a step reads the device once, the
# tiny model's steps take ~0.05 s on a quiet CPU, and 80 of them could end inside a 4 s outage.
RESTART_STEPS = 200
# The job only has to run once the database is back.
DELIVERY_STEPS = 10


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    migrations.upgrade(server.url)
    yield server
    server.close()


@pytest.fixture
def settings(postgres: PrivatePostgres, tmp_path: Path, tiny_sd: Path) -> Settings:
    settings = Settings(
        environment="test",
        data_dir=tmp_path / "data",
        database_url=postgres.url,
        api_key_pepper=TEST_PEPPER,  # type: ignore[arg-type]
        base_models={"tiny-sd": str(tiny_sd)},
    )
    settings.ensure_dirs()
    return settings


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    database = Database(settings)
    yield database
    database.dispose()


def queued_job(database: Database, settings: Settings, *, steps: int) -> str:
    storage = LocalStorage(settings.storage_root)
    with database.sessions() as session:
        tenant = create_tenant(session)
        dataset = create_dataset(session, tenant_id=tenant.id, num_pairs=6)
        make_demo_dataset(storage.local_path(dataset.storage_key), num_pairs=6, resolution=32)
        spec = {**FAST_SPEC, "max_train_steps": steps, "checkpoint_every_n_steps": 20, "validation": {}}
        job = create_job(session, tenant_id=tenant.id, dataset_id=dataset.id, spec=spec)
        session.commit()
        return job.id


def wait_for_line(log: Path, text: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"no {text!r} in the worker's log within {timeout} s"
        time.sleep(0.1)


def poll(database: Database, probe: Callable[[Session], T | None], *, timeout: float = 240) -> T:
    """Wait until `probe` returns something truthy, tolerating the database being down meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with database.sessions() as session:
                value = probe(session)
            if value:
                return value
        except Exception:
            pass
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout} s")


def finished(database: Database, job_id: str) -> Job:
    def probe(session: Session) -> Job | None:
        job = job_repo.get_job_any_tenant(session, job_id)
        return job if job is not None and job.is_finished else None

    return poll(database, probe)


def all_events(session: Session, job_id: str) -> list[JobEvent]:
    events: list[JobEvent] = []
    while True:
        page = event_repo.list_events(session, job_id, after=events[-1].seq if events else None, limit=200)
        events += page.items
        if not page.has_more:
            return events


def assert_recorded_exactly_once(database: Database, job_id: str, *, steps: int) -> None:
    with database.sessions() as session:
        events = all_events(session, job_id)
        ids = [event.seq for event in events]
        assert ids == list(range(1, len(ids) + 1)), "event ids are gapless and unique"
        step_events = [event.data["step"] for event in events if event.type == "step"]
        assert len(step_events) == len(set(step_events)), "no step event written twice"
        assert [e.type for e in events].count("succeeded") == 1
        loss = metric_repo.metric_series(session, job_id)["loss"]
        assert [step for step, _ in loss] == list(range(1, steps + 1)), "one loss point per step"
        assert len(output_repo.list_artifacts(session, job_id)) == 2


def test_database_restart_mid_training_loses_and_duplicates_nothing(
    postgres: PrivatePostgres, settings: Settings, database: Database, tmp_path: Path
) -> None:
    job_id = queued_job(database, settings, steps=RESTART_STEPS)
    log = tmp_path / "worker.log"
    with running_worker(settings, log):
        enqueue_train_job(make_producer(settings), job_id)
        poll(database, lambda s: (job_repo.get_job_any_tenant(s, job_id) or Job(step=0)).step >= 10)
        postgres.stop()
        # Down until a flush tick of the running job has failed (ticks fail only while it trains).
        wait_for_line(log, "writing events failed", timeout=60)
        time.sleep(2)  # a few more ticks fail; training goes on
        postgres.start()
        job = finished(database, job_id)
    text = log.read_text(errors="replace")
    assert job.status == "succeeded" and job.step == RESTART_STEPS, text[-3000:]
    assert "writing events failed" in text, "the outage happened during training"
    assert_recorded_exactly_once(database, job_id, steps=RESTART_STEPS)


def test_a_job_delivered_while_the_database_is_down_runs_once_it_is_back(
    postgres: PrivatePostgres, settings: Settings, database: Database, tmp_path: Path
) -> None:
    job_id = queued_job(database, settings, steps=DELIVERY_STEPS)
    postgres.stop()
    log = tmp_path / "worker.log"
    with running_worker(settings, log):
        enqueue_train_job(make_producer(settings), job_id)
        # The delivery fails to claim the job and is retried with backoff (however long load delays it).
        wait_for_line(log, "Retry in", timeout=300)
        postgres.start()
        job = finished(database, job_id)
    text = log.read_text(errors="replace")
    assert job.status == "succeeded" and job.step == DELIVERY_STEPS, text[-3000:]
    assert "Retry in" in text, "the claim was retried, not dropped"
    assert_recorded_exactly_once(database, job_id, steps=DELIVERY_STEPS)

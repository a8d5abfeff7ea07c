"""The recorder writes events in batches, yet each event row keeps the time the trainer emitted it."""

from __future__ import annotations

import time

from sqlalchemy.orm import Session

from core.db import Database
from core.models import utcnow
from core.queue import make_producer
from core.repositories import events as event_repo
from core.repositories import jobs as job_repo
from core.settings import Settings
from core.storage import LocalStorage, job_key
from tests.conftest import create_job
from trainer.events import Step
from worker.recorder import Recorder
from worker.staging import JobOutputs


def test_an_event_row_keeps_the_time_it_happened_not_the_time_its_batch_was_written(
    settings: Settings, database: Database, session: Session
) -> None:
    job = create_job(session)
    session.commit()
    with database.session_scope() as s:
        job_repo.claim_job(s, job.id, worker_id="w:1")
    storage, key = LocalStorage(settings.storage_root), job_key(job.tenant_id, job.id)
    recorder = Recorder(
        database,
        job.id,
        worker_id="w:1",
        outputs=JobOutputs(storage, key, storage.local_path(key)),
        producer=make_producer(settings),
        flush_seconds=3600,
    )
    before = utcnow()
    recorder(Step(step=1, total_steps=2, metrics={"loss": 1.0}))
    emitted = utcnow()
    time.sleep(0.2)  # the batch is written well after the event
    recorder(Step(step=2, total_steps=2, metrics={"loss": 0.5}))
    recorder.start().close()
    written = utcnow()

    first, second = event_repo.list_events(session, job.id, after=None, limit=10).items
    assert before <= first.created_at <= emitted
    assert emitted < second.created_at <= written
    assert (second.created_at - first.created_at).total_seconds() >= 0.2

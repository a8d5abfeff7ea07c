"""The recorder writes events in batches, yet each event row keeps the time it happened; the job stays
alive (heartbeat) while its files upload."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from core.db import Database
from core.models import Job, utcnow
from core.queue import make_producer
from core.repositories import events as event_repo
from core.repositories import jobs as job_repo
from core.repositories import metrics as metric_repo
from core.repositories import outputs as output_repo
from core.settings import Settings
from core.storage import LocalStorage, Storage, build_storage, job_key
from tests.support.factories import auth_headers, create_job, create_tenant
from tests.support.storage_backends import BOTH_STORAGE_BACKENDS
from trainer.checkpoints import CHECKPOINTS_DIR, PREFIX, STATE_FILE
from trainer.events import Checkpoint, Evaluation, Sample, SampleImage, Step
from worker.recorder import Recorder
from worker.staging import JobOutputs
from worker.translate import translate


def claimed_job(session: Session, database: Database) -> Job:
    """A job that worker "w:1" is running."""
    job = create_job(session)
    session.commit()
    with database.session_scope() as s:
        job_repo.claim_job(s, job.id, worker_id="w:1")
    return job


def recorder_of(
    job: Job,
    database: Database,
    settings: Settings,
    *,
    flush_seconds: float,
    store: Storage | None = None,
    local: Path | None = None,
) -> Recorder:
    """Worker "w:1"'s recorder of `job`, its outputs in `store` (default: the local storage directory,
    written in place) staged in `local`."""
    store = store or LocalStorage(settings.storage_root)
    key = job_key(job.tenant_id, job.id)
    local = local or store.local_dir(key)
    assert local is not None, "an object store needs a local staging folder"
    outputs = JobOutputs(store, key, local)
    return Recorder(
        database,
        job.id,
        worker_id="w:1",
        outputs=outputs,
        producer=make_producer(settings),
        flush_seconds=flush_seconds,
    )


def checkpoint_on_disk(local: Path, step: int = 4) -> Path:
    """A complete checkpoint folder as the trainer leaves it."""
    checkpoint = local / CHECKPOINTS_DIR / f"{PREFIX}{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "adapter.safetensors").write_bytes(b"\0" * 1024)
    (checkpoint / STATE_FILE).write_text("{}")
    return checkpoint


def test_an_event_row_keeps_the_time_it_happened_not_the_time_its_batch_was_written(
    settings: Settings, database: Database, session: Session
) -> None:
    job = claimed_job(session, database)
    recorder = recorder_of(job, database, settings, flush_seconds=3600)
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


class LostAcknowledgement(Database):
    """The real database, except that one commit's acknowledgement is lost on the way back: the
    transaction lands, yet the caller gets the error a dropped connection gives (a COMMIT in flight when
    the server restarts or the network breaks, whose outcome the client cannot know)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.lose_next = threading.Event()
        self.lost = threading.Event()

    @contextmanager
    def session_scope(self) -> Iterator[Session]:
        with super().session_scope() as session:
            yield session
        if self.lose_next.is_set():
            self.lose_next.clear()
            self.lost.set()
            raise OperationalError("COMMIT", {}, ConnectionError("server closed the connection unexpectedly"))


@pytest.fixture
def unreliable_database(settings: Settings) -> Iterator[LostAcknowledgement]:
    database = LostAcknowledgement(settings)
    yield database
    database.dispose()


def test_a_batch_whose_commit_landed_unacknowledged_is_not_written_twice(
    settings: Settings, session: Session, unreliable_database: LostAcknowledgement
) -> None:
    database = unreliable_database
    job = claimed_job(session, database)
    recorder = recorder_of(job, database, settings, flush_seconds=0.05)
    recorder(Step(step=1, total_steps=3, metrics={"loss": 1.0}))
    recorder(Step(step=2, total_steps=3, metrics={"loss": 0.8}))
    database.lose_next.set()
    recorder.start()
    assert database.lost.wait(10), "the recorder never flushed"
    recorder(Step(step=3, total_steps=3, metrics={"loss": 0.6}))  # queued behind the batch in doubt
    recorder.close()

    events = event_repo.list_events(session, job.id, after=None, limit=10).items
    assert [(e.seq, e.type, e.data["step"]) for e in events] == [
        (1, "step", 1),
        (2, "step", 2),
        (3, "step", 3),
    ]
    assert [step for step, _ in metric_repo.metric_series(session, job.id)["loss"]] == [1, 2, 3]
    session.expire_all()
    recorded = job_repo.get_job_any_tenant(session, job.id)
    assert recorded is not None and recorded.step == 3


@BOTH_STORAGE_BACKENDS
def test_a_recorder_whose_job_another_worker_took_over_writes_nothing_into_it_and_stops(
    settings: Settings, database: Database, session: Session, tmp_path: Path
) -> None:
    # A host cut off for longer than the heartbeat timeout, whose job was requeued and resumed elsewhere,
    # gets its link back: what it trained meanwhile must not land in the job the other worker now runs.
    job = claimed_job(session, database)
    store, key = build_storage(settings), job_key(job.tenant_id, job.id)
    local = store.local_dir(key) or tmp_path / "work"
    recorder = recorder_of(job, database, settings, flush_seconds=3600, store=store, local=local)
    with database.session_scope() as s:
        assert job_repo.requeue_job(s, job.id, stale_before=utcnow() + timedelta(seconds=1))
        assert job_repo.claim_job(s, job.id, worker_id="w:2")
        event_repo.append_event(s, job.id, "started", "resumed on w:2")
    checkpoint = checkpoint_on_disk(local)
    recorder(Step(step=4, total_steps=10, metrics={"loss": 1.0}))
    recorder(Checkpoint(step=4, path=str(checkpoint)))
    recorder.start().close()

    assert recorder.lease.lost_ownership and recorder.lease.stop_requested.is_set()
    assert [e.type for e in event_repo.list_events(session, job.id, after=None, limit=10).items] == [
        "started"
    ]
    assert not metric_repo.metric_series(session, job.id)
    assert not output_repo.list_checkpoints(session, job.id)
    session.expire_all()
    taken = job_repo.get_job_any_tenant(session, job.id)
    assert taken is not None and (taken.worker_id, taken.step) == ("w:2", 0)
    if store.local_dir(key) is None:
        assert not store.exists(f"{key}/{CHECKPOINTS_DIR}/{PREFIX}4/{STATE_FILE}"), "uploaded for w:2's job"


UPLOAD_CEILING_S = 120  # a ceiling, not a budget: each wait below ends when its event happens


class HeldUploads:
    """The real object store behind a link that stalls: a checkpoint upload starts (`entered`) and waits
    until the test `release`s it."""

    def __init__(self, store: Storage) -> None:
        self.store, self.entered, self.release = store, threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def put_tree(self, key: str, source: Path, *, last: str | None = None) -> None:
        self.entered.set()
        assert self.release.wait(UPLOAD_CEILING_S), "the test never released the held upload"
        self.store.put_tree(key, source, last=last)


@pytest.mark.parametrize("storage_backend", [pytest.param("s3", marks=pytest.mark.s3)], indirect=True)
def test_the_heartbeat_goes_on_while_a_slow_checkpoint_upload_runs(
    settings: Settings, database: Database, session: Session, tmp_path: Path
) -> None:
    job = claimed_job(session, database)
    local = tmp_path / "work"
    checkpoint = checkpoint_on_disk(local)
    store = HeldUploads(build_storage(settings))
    key = job_key(job.tenant_id, job.id)
    held: Any = store
    recorder = recorder_of(job, database, settings, flush_seconds=0.2, store=held, local=local).start()
    recorder(Checkpoint(step=4, path=str(checkpoint)))
    try:
        assert store.entered.wait(UPLOAD_CEILING_S), "the flusher never started the checkpoint upload"
        before = _heartbeat_at(session, job.id)
        deadline = time.monotonic() + UPLOAD_CEILING_S
        while _heartbeat_at(session, job.id) <= before:
            assert time.monotonic() < deadline, f"no heartbeat in {UPLOAD_CEILING_S} s of a held upload"
            time.sleep(0.05)
        assert not output_repo.list_checkpoints(session, job.id), "the upload is still held"
    finally:
        store.release.set()
    recorder.close()

    assert [c.step for c in output_repo.list_checkpoints(session, job.id)] == [4]
    assert store.exists(f"{key}/{CHECKPOINTS_DIR}/{PREFIX}4/{STATE_FILE}")
    assert not recorder.lease.stop_requested.is_set()


def _heartbeat_at(session: Session, job_id: str) -> datetime:
    session.expire_all()
    job = job_repo.get_job_any_tenant(session, job_id)
    assert job is not None and job.heartbeat_at is not None
    return job.heartbeat_at


class CountedUploads:
    """The real object store, counting what is uploaded to it."""

    def __init__(self, store: Storage) -> None:
        self.store, self.uploads = store, []  # type: ignore[var-annotated]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def put_tree(self, key: str, source: Path, *, last: str | None = None) -> None:
        self.uploads.append(key)
        self.store.put_tree(key, source, last=last)

    def write_stream(self, key: str, stream: Any) -> Any:
        self.uploads.append(key)
        return self.store.write_stream(key, stream)


@pytest.mark.parametrize("storage_backend", [pytest.param("s3", marks=pytest.mark.s3)], indirect=True)
def test_a_flush_retried_while_the_database_is_down_does_not_upload_its_files_again(
    settings: Settings, tmp_path: Path
) -> None:
    # During a database restart the recorder retries its write every second; the checkpoint it
    # uploaded before the first failure (hundreds of MB at real size) must not go up again each time.
    local, key = tmp_path / "work", "tenants/t/jobs/j"
    checkpoint = checkpoint_on_disk(local)
    (local / "samples").mkdir()
    (local / "samples" / "4-0.png").write_bytes(b"png")
    store = CountedUploads(build_storage(settings))
    outputs = JobOutputs(store, key, local)  # type: ignore[arg-type]
    writes = translate(
        [
            Checkpoint(step=4, path=str(checkpoint)),
            Sample(4, [SampleImage("a red square", str(local / "samples" / "4-0.png"), True)]),
        ],
        outputs.key_of,
    )
    outputs.publish(writes)
    outputs.publish(writes)  # the same rows, retried after the database refused them
    assert store.uploads == [f"{key}/{CHECKPOINTS_DIR}/{PREFIX}4", f"{key}/samples/4-0.png"]
    assert store.exists(f"{key}/{CHECKPOINTS_DIR}/{PREFIX}4/{STATE_FILE}") and store.exists(
        f"{key}/samples/4-0.png"
    )


class StorageOutsideTransactions:
    """The real store, noting every call made while the calling thread has a database transaction open
    on `engine` (a slow object store must never hold the job's row locked)."""

    def __init__(self, store: Storage, engine: Engine) -> None:
        self.store, self.calls, self.inside = store, [], []  # type: ignore[var-annotated]
        self._open: set[int] = set()
        event.listen(engine, "begin", lambda _: self._open.add(threading.get_ident()))
        for ending in ("commit", "rollback"):
            event.listen(engine, ending, lambda _: self._open.discard(threading.get_ident()))

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            if threading.get_ident() in self._open:
                self.inside.append(name)
            return method(*args, **kwargs)

        return call


@BOTH_STORAGE_BACKENDS
def test_no_storage_call_runs_inside_the_write_transaction(
    settings: Settings, database: Database, session: Session, tmp_path: Path
) -> None:
    job = claimed_job(session, database)
    real = build_storage(settings)
    key = job_key(job.tenant_id, job.id)
    local = real.local_dir(key) or tmp_path / "work"
    store = StorageOutsideTransactions(real, database.engine)
    slow: Any = store
    recorder = recorder_of(job, database, settings, flush_seconds=3600, store=slow, local=local)
    for step in (2, 4):
        recorder(Checkpoint(step=step, path=str(checkpoint_on_disk(local, step))))
    shutil.rmtree(local / CHECKPOINTS_DIR / f"{PREFIX}2")  # rotated away by the trainer
    (local / "samples").mkdir()
    (local / "samples" / "4-0.png").write_bytes(b"png")
    recorder(Sample(4, [SampleImage("a red square", str(local / "samples" / "4-0.png"), True)]))
    recorder.start().close()

    assert store.calls, "the recorder never asked the store anything"
    assert store.inside == [], "called with a transaction open"
    assert [c.step for c in output_repo.list_checkpoints(session, job.id)] == [4], "the rotated one's row"
    assert [s.step for s in output_repo.list_samples(session, job.id)] == [4]


def test_evaluation_metrics_reach_the_jobs_metrics_route(
    settings: Settings, database: Database, session: Session, client: TestClient
) -> None:
    tenant = create_tenant(session)
    job = create_job(session, tenant_id=tenant.id)
    headers = auth_headers(session, tenant)
    with database.session_scope() as s:
        job_repo.claim_job(s, job.id, worker_id="w:1")
    recorder = recorder_of(job, database, settings, flush_seconds=3600)
    recorder(Step(step=1, total_steps=4, metrics={"loss": 1.0}))
    recorder(Evaluation(step=2, metrics={"heldout_accuracy": 0.75, "heldout_margin": 0.5}))
    recorder(Evaluation(step=4, metrics={"heldout_accuracy": 0.875, "heldout_margin": 0.25}))
    recorder.start().close()

    response = client.get(f"/v1/jobs/{job.id}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    series = response.json()["series"]
    assert series["heldout_accuracy"] == {"steps": [2, 4], "values": [0.75, 0.875]}
    assert series["heldout_margin"] == {"steps": [2, 4], "values": [0.5, 0.25]}
    assert series["loss"] == {"steps": [1], "values": [1.0]}
    events = event_repo.list_events(session, job.id, after=None, limit=10).items
    assert [e.message for e in events if e.type == "evaluation"] == [
        "held-out accuracy 0.750 at step 2",
        "held-out accuracy 0.875 at step 4",
    ]

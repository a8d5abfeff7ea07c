"""A job moves between hosts through storage alone: the second host has none of the first one's files."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from core.db import Database
from core.models import FINISHED_STATUSES, Job, JobEvent, JobStatus
from core.queue import enqueue_train_job, make_producer
from core.repositories import events as event_repo
from core.repositories import jobs as job_repo
from core.repositories import outputs as output_repo
from core.repositories.pagination import MAX_LIMIT
from core.settings import Settings
from core.storage import build_storage
from tests.support.processes import running_worker, wait_finished
from tests.support.storage_backends import BOTH_STORAGE_BACKENDS
from tests.support.worker_hosts import host
from worker.context import WorkerContext
from worker.runner import run_job


class CancelAfterFirstCheckpoint(threading.Thread):
    """Cancels the job once a checkpoint of it is recorded; `status` is what the cancel found (cancelling:
    it reached the running job). It gives up only when the job ends first, not after a fixed time: on a
    loaded machine the first checkpoint can come late, and a canceller that stopped waiting would leave a
    10,000-step job training until the test timed out, with nothing saying why."""

    def __init__(self, ctx: WorkerContext, job_id: str) -> None:
        super().__init__(name=f"cancel-{job_id}", daemon=True)  # never keeps a failed test's process alive
        self.ctx, self.job_id = ctx, job_id
        self.status: JobStatus | None = None

    def run(self) -> None:
        while True:
            with self.ctx.db.session_scope() as s:
                if output_repo.list_checkpoints(s, self.job_id):
                    self.status = job_repo.request_cancel(s, self.job_id)
                    return
                if job_repo.get_status(s, self.job_id) in FINISHED_STATUSES:
                    return
            time.sleep(0.1)


def all_events(session: Session, job_id: str) -> list[JobEvent]:
    """Every event of the job, page by page: a page holds at most MAX_LIMIT, and how many steps the first
    host trains before the cancel reaches it (each a `step` event, every second one a `checkpoint` too)
    grows with the load on the machine."""
    events: list[JobEvent] = []
    while True:
        page = event_repo.list_events(
            session, job_id, after=events[-1].seq if events else None, limit=MAX_LIMIT
        )
        events += page.items
        if not page.has_more:
            return events


@BOTH_STORAGE_BACKENDS
def test_a_job_resumes_on_another_host_from_the_checkpoint_in_storage(
    worker_settings: Settings,
    database: Database,
    make_job: Callable[..., Job],
    session: Session,
    tmp_path: Path,
) -> None:
    job = make_job(max_train_steps=10_000, checkpoint_every_n_steps=2, validation={})
    first = host(worker_settings, database, tmp_path / "host-a", "host-a")
    canceller = CancelAfterFirstCheckpoint(first, job.id)
    canceller.start()
    outcome = run_job(job.id, first)
    canceller.join()
    assert canceller.status == JobStatus.CANCELLING, "the cancel reached the job while it was training"
    assert outcome == "cancelled"
    shutil.rmtree(tmp_path / "host-a")  # the first machine is gone, with everything it had on disk
    session.expire_all()
    kept = max(c.step for c in output_repo.list_checkpoints(session, job.id))
    # Requeued as the reconciler would, to train two steps past the checkpoint it stopped at.
    spec = {**job.spec, "max_train_steps": kept + 2}
    session.execute(
        update(Job).where(Job.id == job.id).values(status="queued", spec=spec, total_steps=kept + 2)
    )
    session.commit()

    second = host(worker_settings, database, tmp_path / "host-b", "host-b")
    assert run_job(job.id, second) == "succeeded"
    session.expire_all()
    events = all_events(session, job.id)
    assert [e.data["resumed_from_step"] for e in events if e.type == "started"] == [0, kept]
    assert (job_repo.get_job_any_tenant(session, job.id) or job).step == kept + 2
    adapter = output_repo.get_artifact(session, job.id, format="diffusers")
    assert adapter is not None and second.storage.size(adapter.storage_key) > 0


@pytest.mark.parametrize("storage_backend", [pytest.param("s3", marks=pytest.mark.s3)], indirect=True)
def test_a_worker_process_configured_for_s3_stores_its_outputs_there(
    worker_settings: Settings, make_job: Callable[..., Job], session: Session, tmp_path: Path
) -> None:
    job = make_job(max_train_steps=2, validation={})
    with running_worker(worker_settings, tmp_path / "worker.log"):
        enqueue_train_job(make_producer(worker_settings), job.id)
        finished = wait_finished(session, job.id)
    assert finished.status == "succeeded", (tmp_path / "worker.log").read_text(errors="replace")[-3000:]
    storage = build_storage(worker_settings)
    artifacts = output_repo.list_artifacts(session, job.id)
    assert len(artifacts) == 2 and all(storage.size(a.storage_key) == a.bytes for a in artifacts)
    assert not worker_settings.storage_root.joinpath("tenants").exists(), (
        "nothing went to the local directory"
    )

"""The disk fills up in the middle of a job: the next checkpoint fails with a clear code, and the
checkpoint written before stays intact (a new run resumes from it)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from core.models import Job
from core.repositories import jobs as job_repo
from core.storage import job_key
from tests.support.disks import fill
from trainer import checkpoints
from trainer.events import Event, Started
from trainer.loop import train
from trainer.spec import TrainSpec
from worker.context import WorkerContext
from worker.runner import run_job


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_full_disk_fails_the_job_with_checkpoint_failed_and_keeps_the_last_checkpoint(
    ctx: WorkerContext,
    make_job: Callable[..., Job],
    session: Session,
    mount_small_disk: Callable[[Path], None],
) -> None:
    job = make_job(max_train_steps=400, checkpoint_every_n_steps=20, validation={})
    output_dir = ctx.storage.local_path(job_key(job.tenant_id, job.id))
    mount_small_disk(output_dir)  # the job's outputs live on a small disk of their own

    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(run_job(job.id, ctx)))
    worker.start()
    deadline = time.monotonic() + 240
    while not checkpoints.complete_checkpoints(output_dir):
        assert worker.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.02)
    ((kept_step, kept_path),) = checkpoints.complete_checkpoints(output_dir)
    kept = tree_digest(kept_path)
    filler = fill(output_dir)
    worker.join(timeout=240)

    assert outcome == ["failed"]
    session.expire_all()
    failed = job_repo.get_job_any_tenant(session, job.id)
    assert failed is not None and failed.status == "failed"
    assert failed.error_code == "checkpoint_failed", (failed.error_code, failed.error_message)
    assert "No space left on device" in (failed.error_message or "")
    assert [step for step, _ in checkpoints.complete_checkpoints(output_dir)] == [kept_step]
    assert tree_digest(kept_path) == kept, "the earlier checkpoint is untouched"

    # Once there is room again, training from that folder resumes at the kept step.
    filler.unlink()
    started: list[Started] = []

    def on_event(event: Event) -> None:
        if isinstance(event, Started):
            started.append(event)

    spec = TrainSpec.model_validate(
        {
            **failed.spec,
            "base_model": ctx.settings.base_model_location(failed.spec["base_model"]),
            "max_train_steps": kept_step + 2,
        }
    )
    dataset_dir = ctx.storage.local_path(f"tenants/{job.tenant_id}/datasets/{job.dataset_id}")
    train(spec, dataset_dir, output_dir, on_event=on_event)
    assert started[0].resumed_from_step == kept_step

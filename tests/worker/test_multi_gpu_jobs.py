"""Jobs with `gpus` > 1: the worker trains them in one process per device (here CPU processes over gloo,
MAPO_WORKER_GPUS=2), records them like any job, and refuses one that asks for more than it has."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file
from sqlalchemy.orm import Session

from core.models import Job
from core.queue import enqueue_train_job, make_producer
from core.repositories import events as event_repo
from core.repositories import jobs as job_repo
from core.repositories import outputs as output_repo
from core.settings import Settings
from tests.support.processes import cancel_once_training, running_worker, wait_finished
from worker.context import WorkerContext
from worker.runner import run_job


def _reload(session: Session, job_id: str) -> Job:
    session.expire_all()
    job = job_repo.get_job_any_tenant(session, job_id)
    assert job is not None
    return job


def test_a_job_asking_for_more_gpus_than_the_worker_has_fails_with_a_code(
    ctx: WorkerContext, make_job: Callable[..., Job], session: Session
) -> None:
    job = make_job(gpus=2)
    one_gpu = dataclasses.replace(ctx, settings=ctx.settings.model_copy(update={"worker_gpus": 1}))
    assert run_job(job.id, one_gpu) == "failed"
    job = _reload(session, job.id)
    assert job.error_code == "not_enough_gpus"
    assert "gpus=2" in (job.error_message or "") and "has 1" in (job.error_message or "")


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_cancelling_a_two_gpu_job_stops_both_processes_and_ends_cancelled(
    ctx: WorkerContext, make_job: Callable[..., Job], session: Session
) -> None:
    job = make_job(gpus=2, max_train_steps=10_000, checkpoint_every_n_steps=10_000, validation={})
    two_gpus = dataclasses.replace(ctx, settings=ctx.settings.model_copy(update={"worker_gpus": 2}))

    canceller = cancel_once_training(ctx.db, job.id, timeout_s=300)
    assert run_job(job.id, two_gpus) == "cancelled"
    canceller.join()
    job = _reload(session, job.id)
    assert job.status == "cancelled" and 0 < job.step < 10_000
    checkpoints = output_repo.list_checkpoints(session, job.id)
    assert [c.step for c in checkpoints] == [job.step], "the ranks checkpoint the step they stopped at"


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_real_worker_trains_a_two_gpu_job_to_one_adapter(
    ctx: WorkerContext,
    worker_settings: Settings,
    make_job: Callable[..., Job],
    session: Session,
    tmp_path: Path,
) -> None:
    settings = worker_settings.model_copy(update={"broker_url": "filesystem://"})
    job = make_job(gpus=2)
    with running_worker(settings, tmp_path / "worker.log", MAPO_WORKER_GPUS="2"):
        enqueue_train_job(make_producer(settings), job.id)
        finished = wait_finished(session, job.id, timeout=480)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert finished.status == "succeeded", log[-5000:]
    assert finished.step == finished.total_steps == 4
    events = event_repo.list_events(session, job.id, after=None, limit=500).items
    started = [e for e in events if e.type == "started"]
    assert len(started) == 1 and started[0].data["world_size"] == 2
    assert started[0].data["effective_batch_size"] == 2 * 2 * 1
    assert [e.data["step"] for e in events if e.type == "step"] == [1, 2, 3, 4]
    samples = output_repo.list_samples(session, job.id)
    assert sorted({s.step for s in samples}) == [0, 4], "validation images from the main process only"
    adapter = output_repo.get_artifact(session, job.id, format="diffusers")
    assert adapter is not None
    weights = load_file(str(ctx.storage.local_path(adapter.storage_key)))
    assert weights and all(k.startswith("unet.") for k in weights)

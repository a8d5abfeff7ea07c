"""The runner on a real database and a real tiny model: what a job's owner sees in the rows."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from safetensors.torch import load
from sqlalchemy import update
from sqlalchemy.orm import Session

from core.models import Job, JobStatus
from core.repositories import events as event_repo
from core.repositories import jobs as job_repo
from core.repositories import metrics as metric_repo
from core.repositories import outputs as output_repo
from core.repositories import webhooks as webhook_repo
from core.storage import job_key
from tests.support.processes import cancel_once_training
from tests.support.storage_backends import BOTH_STORAGE_BACKENDS
from worker.context import WorkerContext
from worker.recorder import Recorder
from worker.runner import _finish, _hand_back, run_job
from worker.staging import JobOutputs


def _reload(session: Session, job_id: str) -> Job:
    session.expire_all()
    job = job_repo.get_job_any_tenant(session, job_id)
    assert job is not None
    return job


@BOTH_STORAGE_BACKENDS
def test_job_succeeds_and_records_events_metrics_outputs(
    ctx: WorkerContext, make_job: Callable[..., Job], session: Session
) -> None:
    job = make_job()
    assert run_job(job.id, ctx) == "succeeded"
    job = _reload(session, job.id)
    assert (job.status, job.step, job.total_steps, job.error_code) == ("succeeded", 4, 4, None)
    assert job.latest_metrics["loss"] > 0 and job.finished_at is not None
    events = event_repo.list_events(session, job.id, after=None, limit=500).items
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    types = [e.type for e in events]
    assert types[0] == "running" and types[-1] == "succeeded"
    assert set(types[1 : types.index("started")]) == {"caching"}, "the cache is built before training"
    assert types.count("step") == 4 and "artifact" in types
    assert [p[0] for p in metric_repo.metric_series(session, job.id)["loss"]] == [1, 2, 3, 4]
    assert [c.step for c in output_repo.list_checkpoints(session, job.id)] == [2, 4]
    samples = output_repo.list_samples(session, job.id)
    assert {(s.step, s.with_lora) for s in samples} == {(0, False), (4, True)}
    adapter = output_repo.get_artifact(session, job.id, format="diffusers")
    assert adapter is not None and len(adapter.sha256) == 64
    with ctx.storage.open_read(adapter.storage_key) as stream:
        assert load(stream.read()), "the stored adapter is a safetensors file"
    for checkpoint in output_repo.list_checkpoints(session, job.id):
        assert ctx.storage.exists(f"{checkpoint.storage_key}/state.json")
    assert all(ctx.storage.exists(s.storage_key) for s in samples)
    assert not list(ctx.settings.work_dir.rglob("*.*")), "the local copy of the outputs is gone once stored"


def test_second_delivery_of_the_same_job_does_nothing(
    ctx: WorkerContext, make_job: Callable[..., Job], session: Session
) -> None:
    job = make_job(max_train_steps=2)
    assert run_job(job.id, ctx) == "succeeded"
    before = event_repo.list_events(session, job.id, after=None, limit=500).items
    assert run_job(job.id, ctx) == "skipped"
    after = event_repo.list_events(session, job.id, after=None, limit=500).items
    assert len(after) == len(before)
    assert _reload(session, job.id).attempts == 1


def test_cancel_while_running_ends_cancelled(
    ctx: WorkerContext, make_job: Callable[..., Job], session: Session
) -> None:
    job = make_job(max_train_steps=10_000, checkpoint_every_n_steps=10_000, validation={})

    canceller = cancel_once_training(ctx.db, job.id, timeout_s=120)
    assert run_job(job.id, ctx) == "cancelled"
    canceller.join()
    job = _reload(session, job.id)
    assert job.status == "cancelled" and 0 < job.step < 10_000


def test_unknown_base_model_fails_with_a_code(
    ctx: WorkerContext, make_job: Callable[..., Job], session: Session
) -> None:
    job = make_job()
    job.spec = {**job.spec, "base_model": "gone-model"}
    session.commit()
    assert run_job(job.id, ctx) == "failed"
    job = _reload(session, job.id)
    assert job.error_code == "unknown_base_model" and "gone-model" in (job.error_message or "")


def test_training_error_is_stored_with_its_code(
    ctx: WorkerContext, make_job: Callable[..., Job], session: Session
) -> None:
    job = make_job()
    dataset_dir = ctx.storage.local_path(f"tenants/{job.tenant_id}/datasets/{job.dataset_id}")
    (dataset_dir / "manifest.json").unlink()
    assert run_job(job.id, ctx) == "failed"
    job = _reload(session, job.id)
    assert job.error_code == "invalid_dataset"
    last = event_repo.list_events(session, job.id, after=None, limit=500).items[-1]
    assert last.type == "failed" and last.level == "error"


def test_recorder_retries_a_failed_write_without_losing_events(
    ctx: WorkerContext, make_job: Callable[..., Job], session: Session
) -> None:
    from trainer.events import Step

    job = make_job()
    with ctx.db.session_scope() as s:
        job_repo.claim_job(s, job.id, worker_id=ctx.worker_id)
    recorder = Recorder(
        ctx.db,
        job.id,
        worker_id=ctx.worker_id,
        outputs=JobOutputs(ctx.storage, job_key(job.tenant_id, job.id), ctx.settings.work_dir / job.id),
        producer=ctx.producer,
        flush_seconds=3600,
    )
    recorder(Step(step=1, total_steps=4, metrics={"loss": 1.0}))
    real_scope = ctx.db.session_scope
    ctx.db.session_scope = _failing_scope  # type: ignore[method-assign]
    try:
        recorder._drain()
        with pytest.raises(RuntimeError):
            recorder._flush()
    finally:
        ctx.db.session_scope = real_scope  # type: ignore[method-assign]
    recorder(Step(step=2, total_steps=4, metrics={"loss": 0.5}))
    recorder.start().close()
    steps = [
        e.data["step"]
        for e in event_repo.list_events(session, job.id, after=None, limit=50).items
        if e.type == "step"
    ]
    assert steps == [1, 2]


def _failing_scope():  # type: ignore[no-untyped-def]
    raise RuntimeError("database unavailable")


def test_ending_or_handing_back_a_job_another_worker_now_holds_leaves_it_and_its_log_alone(
    ctx: WorkerContext, make_job: Callable[..., Job], session: Session
) -> None:
    # E.g. a host cut off past the heartbeat timeout comes back while its job runs elsewhere: whatever it
    # then records (its run's end, or a hand-back as it shuts down) must not reach the job or its owner.
    job = make_job()
    hooks = [{"url": "https://hooks.example/mapo", "events": ["succeeded", "cancelled"]}]
    with ctx.db.session_scope() as s:
        s.execute(update(Job).where(Job.id == job.id).values(webhooks=hooks))
        assert job_repo.claim_job(s, job.id, worker_id="other-host:7")
    before = [e.type for e in event_repo.list_events(session, job.id, after=None, limit=100).items]

    assert _finish(ctx, job.id, JobStatus.SUCCEEDED, None) == "abandoned"
    assert _hand_back(ctx, job.id) == "abandoned"

    after = [e.type for e in event_repo.list_events(session, job.id, after=None, limit=100).items]
    assert after == before
    held = _reload(session, job.id)
    assert (held.status, held.worker_id) == ("running", "other-host:7")
    with ctx.db.session_scope() as s:
        assert not webhook_repo.list_deliveries(s, job.id, after=None, limit=10).items

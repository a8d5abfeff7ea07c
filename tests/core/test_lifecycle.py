"""The job lifecycle on a real database and the embedded broker: each transition writes its status, its
event, its webhooks and its task together, and one that loses its race writes nothing."""

from __future__ import annotations

import ast
import inspect
from datetime import timedelta
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy.orm import Session

from core import lifecycle
from core.db import Database, commit, rollback
from core.job_errors import JobErrorCode
from core.lifecycle import JobFailure
from core.models import Job, JobStatus, utcnow
from core.queue import make_producer, waiting_message_count
from core.repositories import events as event_repo
from core.repositories import jobs as job_repo
from core.repositories import webhooks as webhook_repo
from core.settings import Settings
from tests.support.factories import create_dataset, create_tenant

ROOT = Path(__file__).resolve().parents[2]
EVERY_EVENT = ["started", "checkpoint", "succeeded", "failed", "cancelled"]


@pytest.fixture
def producer(settings: Settings) -> Celery:
    settings.ensure_dirs()  # the embedded broker's folders
    return make_producer(settings)


def new_job(session: Session, **overrides: object) -> Job:
    """A job not yet written, with a hook for every webhook event."""
    tenant = create_tenant(session)
    dataset = create_dataset(session, tenant_id=tenant.id)
    values: dict[str, object] = {
        "tenant_id": tenant.id,
        "dataset_id": dataset.id,
        "spec": {"base_model": "tiny-sd", "method": "mapo", "max_train_steps": 10},
        "metadata_": {},
        "webhooks": [{"url": "https://hooks.example/mapo", "events": EVERY_EVENT}],
        "total_steps": 10,
    }
    return Job(**{**values, **overrides})


def queued(session: Session, producer: Celery) -> str:
    job = lifecycle.queue(session, new_job(session), producer=producer)
    commit(session)
    return job.id


def log_of(session: Session, job_id: str) -> list[tuple[str, str]]:
    return [(e.type, e.level) for e in event_repo.list_events(session, job_id, after=None, limit=100).items]


def webhooks_of(session: Session, job_id: str) -> list[str]:
    deliveries = webhook_repo.list_deliveries(session, job_id, after=None, limit=100).items
    return [event for _, event in sorted((d.created_at, d.event) for d in deliveries)]


def test_queue_writes_the_row_and_its_event_and_sends_the_task_only_once_committed(
    session: Session, producer: Celery
) -> None:
    job = lifecycle.queue(session, new_job(session, queue="mapo.gpu.h100", priority=5), producer=producer)
    assert job.status == JobStatus.QUEUED
    assert waiting_message_count(producer, "mapo.gpu.h100") == 0, "sent before the commit"
    commit(session)
    assert waiting_message_count(producer, "mapo.gpu.h100") == 1
    assert log_of(session, job.id) == [("queued", "info")]


def test_a_rolled_back_queue_leaves_no_row_and_sends_nothing(
    session: Session, database: Database, producer: Celery
) -> None:
    job_id = lifecycle.queue(session, new_job(session), producer=producer).id
    rollback(session)
    with database.sessions() as other:
        assert job_repo.get_job_any_tenant(other, job_id) is None
    assert waiting_message_count(producer) == 0


def test_claim_logs_the_attempt_and_sends_started_only_on_the_first(
    session: Session, producer: Celery
) -> None:
    job_id = queued(session, producer)
    claimed = lifecycle.claim(session, job_id, worker_id="w:1", producer=producer)
    assert claimed is not None and (claimed.status, claimed.attempts) == (JobStatus.RUNNING, 1)
    assert lifecycle.claim(session, job_id, worker_id="w:2", producer=producer) is None, "claimed twice"
    assert lifecycle.requeue(
        session, job_id, reason=lifecycle.WORKER_SHUTTING_DOWN, producer=producer, worker_id="w:1"
    )
    assert lifecycle.claim(session, job_id, worker_id="w:2", producer=producer) is not None
    commit(session)
    assert log_of(session, job_id) == [
        ("queued", "info"),
        ("running", "info"),
        ("requeued", "warning"),
        ("running", "info"),
    ]
    assert webhooks_of(session, job_id) == ["started"], "not again when a requeued job resumes"
    assert waiting_message_count(producer) == 2, "the first message and the requeued one"


def test_cancelling_a_queued_job_ends_it_at_once_and_a_running_one_asks_its_worker(
    session: Session, producer: Celery
) -> None:
    waiting, running = queued(session, producer), queued(session, producer)
    lifecycle.claim(session, running, worker_id="w:1", producer=producer)
    for _ in range(2):  # a repeated request changes nothing and logs nothing
        assert lifecycle.request_cancel(session, waiting, producer=producer) == JobStatus.CANCELLED
        assert lifecycle.request_cancel(session, running, producer=producer) == JobStatus.CANCELLING
    commit(session)
    assert log_of(session, waiting) == [("queued", "info"), ("cancel_requested", "info")]
    assert webhooks_of(session, waiting) == ["cancelled"]
    assert [t for t, _ in log_of(session, running)] == ["queued", "running", "cancel_requested"]
    assert webhooks_of(session, running) == ["started"], "its worker sends `cancelled` when it stops"
    assert lifecycle.request_cancel(session, "job_nope", producer=producer) is None


def test_requeueing_a_cancelling_job_honours_the_cancel(session: Session, producer: Celery) -> None:
    job_id = queued(session, producer)
    lifecycle.claim(session, job_id, worker_id="w:1", producer=producer)
    lifecycle.request_cancel(session, job_id, producer=producer)
    reason = lifecycle.heartbeat_lost(120)
    stale_before = utcnow() + timedelta(seconds=1)
    assert lifecycle.requeue(
        session, job_id, reason=reason, producer=producer, stale_before=stale_before
    ) == (JobStatus.CANCELLED)
    commit(session)
    last = event_repo.list_events(session, job_id, after=None, limit=100).items[-1]
    assert (last.type, last.level, last.message) == (
        "cancelled",
        "warning",
        "cancelled: its worker stopped heartbeating for over 120 s",
    )
    assert webhooks_of(session, job_id) == ["started", "cancelled"]
    assert waiting_message_count(producer) == 1, "nothing sent again for a cancelled job"


def test_requeue_leaves_a_job_held_by_a_live_or_another_worker_alone(
    session: Session, producer: Celery
) -> None:
    job_id = queued(session, producer)
    lifecycle.claim(session, job_id, worker_id="w:1", producer=producer)
    reason = lifecycle.heartbeat_lost(120)
    long_ago = utcnow() - timedelta(minutes=5)
    assert lifecycle.requeue(session, job_id, reason=reason, producer=producer, stale_before=long_ago) is None
    assert lifecycle.requeue(session, job_id, reason=reason, producer=producer, worker_id="w:2") is None
    commit(session)
    assert job_repo.get_status(session, job_id) == JobStatus.RUNNING
    assert [t for t, _ in log_of(session, job_id)] == ["queued", "running"]


def test_finish_records_the_failure_its_event_and_its_webhook_once(
    session: Session, producer: Celery
) -> None:
    job_id = queued(session, producer)
    lifecycle.claim(session, job_id, worker_id="w:1", producer=producer)
    failure = JobFailure(JobErrorCode.NON_FINITE_LOSS, "loss is nan at step 3")
    finish = {"outcome": JobStatus.FAILED, "producer": producer, "failure": failure}
    assert not lifecycle.finish(session, job_id, worker_id="w:2", **finish), "not w:2's job"
    assert lifecycle.finish(session, job_id, worker_id="w:1", **finish)
    assert not lifecycle.finish(session, job_id, worker_id="w:1", **finish), "it has ended"
    commit(session)
    job = job_repo.get_job_any_tenant(session, job_id)
    assert job is not None
    assert (job.status, job.error_code, job.error_message) == ("failed", "non_finite_loss", failure.message)
    last = event_repo.list_events(session, job_id, after=None, limit=100).items[-1]
    assert (last.type, last.level, last.data) == ("failed", "error", {"error_code": "non_finite_loss"})
    assert last.message == "job failed: non_finite_loss: loss is nan at step 3"
    assert webhooks_of(session, job_id) == ["started", "failed"]


def test_finish_refuses_an_outcome_that_is_not_an_ending_or_a_failure_without_a_code(
    session: Session, producer: Celery
) -> None:
    with pytest.raises(ValueError, match="finishes as one of"):
        lifecycle.finish(session, "job_x", outcome=JobStatus.RUNNING, worker_id="w:1", producer=producer)
    with pytest.raises(ValueError, match="carries a failure"):
        lifecycle.finish(session, "job_x", outcome=JobStatus.FAILED, worker_id="w:1", producer=producer)


STATUS_CHANGES = {"claim_job", "request_cancel", "finish_job", "requeue_job"}


def _status_changes_in(source: str) -> list[int]:
    """Lines of `source` that change a job's status by hand: a call of a status-changing repository
    function, `Job(status=...)`, or an assignment to the `status` of a name that says it is a job."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", None))
            through_lifecycle = getattr(getattr(node.func, "value", None), "id", None) == "lifecycle"
            if (name in STATUS_CHANGES and not through_lifecycle) or (
                name == "Job" and any(k.arg == "status" for k in node.keywords)
            ):
                lines.append(node.lineno)
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(_is_job_status(target) for target in targets):
                lines.append(node.lineno)
    return lines


def _is_job_status(target: ast.expr) -> bool:
    owner = target.value if isinstance(target, ast.Attribute) and target.attr == "status" else None
    return isinstance(owner, ast.Name) and "job" in owner.id.lower()


def test_no_code_outside_the_lifecycle_changes_a_job_status() -> None:
    owners = {ROOT / "core" / "lifecycle.py", ROOT / "core" / "repositories" / "jobs.py"}
    modules = [p for package in ("api", "core", "worker", "ops") for p in (ROOT / package).rglob("*.py")]
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in modules
        if path not in owners
        for line in _status_changes_in(path.read_text())
    ]
    assert found == [], "change a job's status through core.lifecycle"


def test_the_check_finds_a_status_changed_by_hand() -> None:
    by_hand = """
def end(session, job, dataset):
    job.status = "failed"
    dataset.status = "ready"
    job_repo.finish_job(session, job.id, status="failed")
    session.add(Job(status="running"))
    lifecycle.request_cancel(session, job.id, producer=producer)
"""
    assert _status_changes_in(by_hand) == [3, 5, 6]


def test_every_code_a_trainer_error_carries_is_catalogued() -> None:
    # Every module that defines a TrainingError subclass, imported here so the check does not depend
    # on which other tests ran first.
    import trainer.errors
    import trainer.launch
    import worker.devices

    def subclasses(cls: type) -> list[type]:
        return [cls] + [s for sub in cls.__subclasses__() for s in subclasses(sub)]

    codes = {cls.code for cls in subclasses(trainer.errors.TrainingError)}
    assert {"rank_failed", "not_enough_gpus"} <= codes
    assert inspect.ismodule(trainer.launch) and inspect.ismodule(worker.devices)
    assert codes - set(JobErrorCode) == set()

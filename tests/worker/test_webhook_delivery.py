"""A job trained by a real `celery worker` (the command `mapo serve` runs, on the GPU queue only) sends its
webhooks through the sender that worker starts: a real receiver on loopback checks each signature,
answers 500 to every first attempt, and gets the retry with the same webhook-id and body; events nobody
subscribed to are never sent."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from core.models import Job, WebhookDelivery
from core.queue import WEBHOOK_QUEUE, enqueue_train_job, make_producer
from core.repositories import webhooks as webhook_repo
from core.settings import Settings
from tests.support.processes import running_worker, wait_finished
from tests.support.webhook_receiver import Receiver, running_receiver


@pytest.fixture(params=["filesystem", pytest.param("redis", marks=pytest.mark.redis)])
def broker_settings(request: pytest.FixtureRequest, worker_settings: Settings) -> Settings:
    if request.param == "filesystem":
        return worker_settings
    url = request.getfixturevalue("redis_url")
    import redis

    redis.Redis.from_url(url).delete(WEBHOOK_QUEUE)  # deliveries a crashed earlier run may have left
    return worker_settings.model_copy(update={"broker_url": url})


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    found = Receiver(fail_first=True)
    with running_receiver(found) as url:
        yield found, url


def _all_delivered(session: Session, job_id: str, timeout: float = 120) -> list[WebhookDelivery]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        session.expire_all()
        deliveries = webhook_repo.list_deliveries(session, job_id, after=None, limit=50).items
        if deliveries and all(d.status != "pending" for d in deliveries):
            return deliveries
        time.sleep(0.2)
    raise AssertionError(f"the webhooks of job {job_id} were not all delivered within {timeout}s")


@pytest.mark.slow
def test_a_trained_job_sends_its_signed_webhooks_and_retries_after_a_500(
    broker_settings: Settings,
    make_job: Callable[..., Job],
    session: Session,
    receiver: tuple[Receiver, str],
    tmp_path: Path,
) -> None:
    found, base = receiver
    job = make_job(max_train_steps=2, validation={})  # one checkpoint, at step 2
    hooks = [
        {"url": f"{base}/ends", "events": ["started", "succeeded"]},
        {"url": f"{base}/progress", "events": ["checkpoint", "failed"]},
    ]
    session.execute(update(Job).where(Job.id == job.id).values(webhooks=hooks))
    found.secret = webhook_repo.ensure_secret(session, job.tenant_id).secret
    session.commit()
    log = tmp_path / "worker.log"
    with running_worker(broker_settings, log, MAPO_WEBHOOK_BACKOFF_SECONDS="0.2"):
        enqueue_train_job(make_producer(broker_settings), job.id)
        assert wait_finished(session, job.id).status == "succeeded", log.read_text(errors="replace")[-3000:]
        deliveries = _all_delivered(session, job.id)
    assert not psutil.pid_exists(_sender_pid(log)), "the sender stops with its worker"
    assert {(d.event, d.url, d.status) for d in deliveries} == {
        ("started", f"{base}/ends", "succeeded"),
        ("succeeded", f"{base}/ends", "succeeded"),
        ("checkpoint", f"{base}/progress", "succeeded"),
    }
    requests = found.snapshot()
    assert all(r.signed for r in requests), "every request carries a valid signature"
    for delivery in deliveries:
        mine = [r for r in requests if r.msg_id == delivery.id]
        assert [r.answered for r in mine] == [500, 204], "a 500, then the retry with the same webhook-id"
        assert mine[0].body == mine[1].body == delivery.payload.encode()
    assert (
        sorted(r.type for r in requests if r.path == "/ends") == ["job.started"] * 2 + ["job.succeeded"] * 2
    )
    assert {r.type for r in requests if r.path == "/progress"} == {"job.checkpoint"}, "no job.failed"
    attempts = webhook_repo.attempts_of(session, [d.id for d in deliveries])
    assert all([a.response_status for a in attempts[d.id]] == [500, 204] for d in deliveries)


def _sender_pid(log: Path, timeout: float = 60) -> int:
    """The pid of the webhook sender that the worker writing `log` started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"started the webhook sender \(pid (\d+)\)", log.read_text(errors="replace"))
        if found:
            return int(found.group(1))
        time.sleep(0.2)
    raise AssertionError(f"no webhook sender started within {timeout}s")


@pytest.mark.slow
def test_a_sender_whose_worker_was_killed_outright_stops_by_itself(
    worker_settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    with running_worker(worker_settings, log) as worker:
        sender = psutil.Process(_sender_pid(log))
        os.kill(worker.pid, signal.SIGKILL)  # the main process only: its children are orphaned
        worker.wait()
        try:
            sender.wait(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)  # an orphaned pool child, if it is still there

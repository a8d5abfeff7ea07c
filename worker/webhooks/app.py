"""The webhook sender: `celery -A worker.webhooks.app worker -Q mapo.webhooks -P threads -c 4`.

A Celery app of its own, apart from the GPU worker's (worker.celery_app): a GPU worker runs one training
at a time in one pool process for hours, and a delivery must not wait behind it. Each GPU worker starts
one of these beside it (worker/webhooks/sidecar.py), so a single-machine `mapo serve` sends webhooks with
no extra process to run. Sending is I/O, so a thread pool serves many deliveries at once.

At start, and every `reconcile_interval_seconds`, it re-sends deliveries whose message was lost.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from celery import Celery, Task
from celery.signals import worker_init, worker_ready, worker_shutdown

from core.db import Database
from core.queue import DELIVER_WEBHOOK_TASK, WEBHOOK_QUEUE, celery_config
from core.settings import Settings
from worker.webhooks.sidecar import PARENT_PID_ENV

log = logging.getLogger(__name__)
# Longer than the longest wait between two attempts (webhook_max_backoff_seconds is at most 6 hours),
# so Redis does not hand a delivery waiting for its retry to a second sender early.
REDIS_VISIBILITY_TIMEOUT_S = 7 * 3600
PARENT_CHECK_S = 1.0


def sender_config(settings: Settings) -> dict[str, Any]:
    config = celery_config(settings)
    if settings.broker_url.startswith(("redis", "rediss")):
        config["broker_transport_options"] = {"visibility_timeout": REDIS_VISIBILITY_TIMEOUT_S}
    config |= {
        "task_acks_late": True,
        "task_default_queue": WEBHOOK_QUEUE,
        "worker_prefetch_multiplier": 4,
    }
    return config


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings()
    settings.ensure_dirs()
    celery = Celery("mapo-webhooks")
    celery.conf.update(sender_config(settings))
    return celery


app = create_app()
_stop = threading.Event()


_resources_lock = threading.Lock()
_resources_made: list[tuple[Settings, Database]] = []


def _resources() -> tuple[Settings, Database]:
    """Settings and database of this process, built once by whichever thread needs them first (a task
    may run before worker_ready)."""
    with _resources_lock:
        if not _resources_made:
            settings = Settings()
            _resources_made.append((settings, Database(settings)))
        return _resources_made[0]


@app.task(name=DELIVER_WEBHOOK_TASK, bind=True, acks_late=True, ignore_result=True, max_retries=None)
def deliver_webhook(self: Task, delivery_id: str, attempt: int) -> str:
    """Attempt `attempt` of a delivery; on failure the next attempt is scheduled with backoff."""
    from worker.webhooks.sender import deliver

    settings, db = _resources()
    outcome = deliver(db, settings, delivery_id, attempt)
    if outcome.retry_in is not None:
        raise self.retry(args=[delivery_id, attempt + 1], countdown=outcome.retry_in)
    return outcome.status


@worker_init.connect
def _ignore_graceful_stop_signal(sender: Any = None, **_: Any) -> None:
    # A GPU worker that is told to stop asks its children, this sender included, to checkpoint with
    # SIGUSR2 (worker/shutdown.py); whose default action would kill this process mid-delivery. It is
    # stopped with SIGTERM afterwards, finishing the attempts in flight.
    if getattr(sender, "app", None) is app:
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)


@worker_ready.connect
def _start(sender: Any = None, **_: Any) -> None:
    if getattr(sender, "app", None) is not app:
        return
    threading.Thread(target=_sweep, name="mapo-webhook-sweep", daemon=True).start()
    parent = os.environ.get(PARENT_PID_ENV)
    if parent:
        threading.Thread(target=_follow_parent, args=(int(parent),), daemon=True).start()


@worker_shutdown.connect
def _stop_threads(**_: Any) -> None:
    _stop.set()


def _sweep() -> None:
    from core.queue import make_producer
    from worker.webhooks.sender import resend_overdue

    settings, db = _resources()
    producer = make_producer(settings)
    while True:
        try:
            resend_overdue(db, producer, settings=settings)
        except Exception:
            log.exception("re-sending overdue webhook deliveries failed")
        if _stop.wait(settings.reconcile_interval_seconds):
            return


def _follow_parent(parent_pid: int) -> None:
    # Orphaned (the GPU worker was killed outright): stop as if told to, finishing attempts in flight.
    while not _stop.wait(PARENT_CHECK_S):
        if os.getppid() != parent_pid:
            log.warning("the GPU worker %d that started this webhook sender is gone; stopping", parent_pid)
            os.kill(os.getpid(), signal.SIGTERM)
            return

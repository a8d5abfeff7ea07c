"""The Celery app of the GPU worker: `celery -A worker.celery_app worker -Q mapo.gpu`.

One training at a time per process (concurrency 1, prefetch 1), acknowledged late so a message is only
gone once its job has ended, and a fresh child per task so each training starts with clean GPU memory.
The job row, not the broker, is the source of truth: a redelivered message finds the row claimed.
Beside the worker runs a webhook sender on its own queue (worker/webhooks/sidecar.py), so deliveries
never wait behind a training.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.signals import (
    celeryd_init,
    task_failure,
    task_received,
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)
from kombu.entity import Queue

from core.queue import celery_config
from core.settings import Settings

if TYPE_CHECKING:
    from worker.reconciler import Reconciler

# Longer than any training, so Redis never hands a healthy running job to a second worker.
REDIS_VISIBILITY_TIMEOUT_S = 7 * 24 * 3600


def worker_config(settings: Settings) -> dict[str, Any]:
    config = celery_config(settings)
    if settings.broker_url.startswith(("redis", "rediss")):
        config["broker_transport_options"] |= {"visibility_timeout": REDIS_VISIBILITY_TIMEOUT_S}
    config |= {
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,
        "worker_max_tasks_per_child": 1,
        # Consumed when the worker is started without `-Q` (MAPO_WORKER_QUEUES; `-Q` overrides it).
        "task_queues": [Queue(name) for name in settings.consumed_queues],  # type: ignore[no-untyped-call]
        "task_default_queue": settings.consumed_queues[0],
        "include": ["worker.tasks"],
    }
    return config


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings()
    settings.ensure_dirs()
    celery = Celery("mapo-worker")
    celery.conf.update(worker_config(settings))
    return celery


@dataclass
class MainProcess:
    """What a worker's main process runs beside its pool: the reconciler and the webhook sender. A forked
    pool child inherits this and must neither use nor stop them (`_fresh_connections_after_fork`)."""

    reconciler: Reconciler | None = None
    webhook_sender: subprocess.Popen[bytes] | None = None
    # The cgroup's OOM kill count when the running task was received (worker/process_deaths.py).
    oom_kills_at_start: int | None = None


_main = MainProcess()


@celeryd_init.connect
def _remember_node_name(sender: str, **_: Any) -> None:
    """Before the pool forks: job rows name the node (e.g. gpu1@host) that ran them, as `workers` does."""
    from worker.context import set_node_name

    set_node_name(sender)


@worker_ready.connect
def _start_reconciler(sender: Any, **_: Any) -> None:
    """In the worker's main process: advertise this worker and requeue jobs whose worker died, now and
    periodically."""
    from core.db import Database
    from core.queue import make_producer
    from worker.capabilities import advertisement
    from worker.reconciler import Reconciler

    settings = Settings()
    queues = sorted(sender.app.amqp.queues.consume_from)
    _main.reconciler = Reconciler(
        db=Database(settings),
        producer=make_producer(settings),
        worker_id=sender.hostname,
        heartbeat_timeout_seconds=settings.heartbeat_timeout_seconds,
        interval_seconds=settings.reconcile_interval_seconds,
        max_worker_losses=settings.max_worker_losses,
        advertisement=advertisement(sender.hostname, queues),
        work_dir=settings.work_dir,
    ).start()


@worker_ready.connect
def _start_webhook_sender(**_: Any) -> None:
    """In the worker's main process: a webhook sender beside this worker (see worker/webhooks/sidecar.py)."""
    from worker.webhooks.sidecar import start_sender

    _main.webhook_sender = start_sender(Settings())


@worker_shutting_down.connect
def _begin_graceful_stop(**_: Any) -> None:
    """On SIGTERM: a running job checkpoints and goes back to the queue. An idle worker also stops its
    webhook sender now, alongside its own shutdown (each takes seconds); a busy one keeps it until the
    pool has stopped, so the webhooks of that hand-back go out from here."""
    from celery.worker import state

    from worker.shutdown import forward_to_children
    from worker.webhooks.sidecar import ask_sender_to_stop

    sender = _main.webhook_sender
    forward_to_children(exclude=frozenset() if sender is None else frozenset({sender.pid}))
    if sender is not None and not state.active_requests:
        ask_sender_to_stop(sender)


@worker_shutdown.connect
def _stop_reconciler(**_: Any) -> None:
    if _main.reconciler is not None:
        _main.reconciler.stop()
    sender, _main.webhook_sender = _main.webhook_sender, None
    if sender is not None:
        from worker.webhooks.sidecar import stop_sender

        stop_sender(sender)


@task_received.connect
def _note_oom_kills(**_: Any) -> None:
    """In the main process, as a job's message arrives (one at a time): the OOM kill count to compare
    with if its pool child dies."""
    from worker.process_deaths import oom_kill_count

    _main.oom_kills_at_start = oom_kill_count()


@task_failure.connect
def _take_back_from_dead_child(
    sender: Any, task_id: str, exception: BaseException, args: tuple[Any, ...] = (), **_: Any
) -> None:
    """In the main process, when the pool child running a job died (killed, out of memory, a crash): take
    the job back at once with the cause named, counting the loss, instead of after the heartbeat timeout.
    The reconciler still does it then if this fails (say the database is away)."""
    from celery.exceptions import WorkerLostError

    from core.queue import TRAIN_JOB_TASK

    reconciler = _main.reconciler
    lost = isinstance(exception, WorkerLostError) and getattr(sender, "name", None) == TRAIN_JOB_TASK
    if not lost or reconciler is None or not args:
        return
    from worker.process_deaths import describe_death, oom_kill_count

    cause = describe_death(
        str(exception), oom_kills_before=_main.oom_kills_at_start, oom_kills_after=oom_kill_count()
    )
    job_id = str(args[0])

    def take_back() -> None:
        try:
            reconciler.take_back_from_dead_child(job_id, cause)
        except Exception:
            logging.getLogger(__name__).warning("job %s: could not take it back", job_id, exc_info=True)

    # A thread: the consumer's loop must not wait on the database.
    threading.Thread(target=take_back, name=f"take-back-{task_id}", daemon=True).start()


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    # A forked child must not use, or close, the connections it inherited from the main process, nor
    # stop what the main process runs.
    if _main.reconciler is not None:
        _main.reconciler.forget_after_fork()
    _main.reconciler, _main.webhook_sender = None, None
    from worker.shutdown import ignore_in_idle_child

    ignore_in_idle_child()
    from worker.context import get_context

    get_context.cache_clear()


app = create_app()

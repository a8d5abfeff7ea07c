"""Queue and task names, and the broker connection settings that the API (producer) and the worker
(consumer) must share. The API enqueues by task name and never imports the worker or torch."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.exceptions import ChannelError

from core.embedded_broker import TRANSPORT
from core.settings import DEFAULT_QUEUE, Settings

GPU_QUEUE = DEFAULT_QUEUE
TRAIN_JOB_TASK = "mapo.train_job"
# Webhook deliveries have a queue of their own: they must never wait behind a training.
WEBHOOK_QUEUE = "mapo.webhooks"
DELIVER_WEBHOOK_TASK = "mapo.deliver_webhook"


# Job priorities: 0 (lowest, the default) to 9 (highest).
MIN_PRIORITY, MAX_PRIORITY = 0, 9
# kombu's Redis transport keeps one list per priority step and pops the lowest step first; one step per
# job priority, so every level is distinct (its default steps 0, 3, 6, 9 would merge neighbours).
REDIS_PRIORITY_STEPS = list(range(MIN_PRIORITY, MAX_PRIORITY + 1))


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Transport options: priority lists on Redis; for the embedded `filesystem://` broker one folder
    that serves as both in- and outbox (that transport has no priorities: its queues are FIFO)."""
    if settings.broker_url.startswith(("redis", "rediss")):
        return {"priority_steps": REDIS_PRIORITY_STEPS}
    if not settings.broker_url.startswith("filesystem"):
        return {}
    folder = str(settings.broker_dir.resolve())
    return {
        "data_folder_in": folder,
        "data_folder_out": folder,
        "processed_folder": str((settings.broker_dir / "processed").resolve()),
        # Exchange bindings; kombu's default is ./control relative to the working directory.
        "control_folder": str((settings.broker_dir / "control").resolve()),
        "store_processed": False,
        # kombu lists the folder once a second by default: up to a second between submit and a worker
        # picking the job up. A listing of a nearly empty folder costs little; poll 5 times as often.
        "polling_interval": 0.2,
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery configuration common to producer and consumer."""
    return {
        "broker_url": settings.broker_url,
        # Celery's default for filesystem:// is kombu's own transport, which is not FIFO (embedded_broker.py).
        "broker_transport": TRANSPORT if settings.broker_url.startswith("filesystem") else None,
        "result_backend": settings.result_backend,
        "broker_transport_options": broker_transport_options(settings),
        "task_default_queue": GPU_QUEUE,
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
    }


def make_producer(settings: Settings) -> Celery:
    """A Celery app used only to send tasks by name."""
    app = Celery("mapo-producer")
    app.conf.update(celery_config(settings))
    return app


def broker_priority(priority: int) -> int:
    """The message priority for a job priority (higher first): kombu's Redis transport serves the
    lowest number first, so the scale is turned over."""
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be {MIN_PRIORITY}..{MAX_PRIORITY}, got {priority}")
    return MAX_PRIORITY - priority


def enqueue_train_job(producer: Celery, job_id: str, *, queue: str = GPU_QUEUE, priority: int = 0) -> None:
    """Send the training task for `job_id` to `queue` (the job's); call only after the job row is
    committed."""
    producer.send_task(TRAIN_JOB_TASK, args=[job_id], queue=queue, priority=broker_priority(priority))


def enqueue_webhook_delivery(
    producer: Celery, delivery_id: str, *, attempt: int, countdown: float | None = None
) -> None:
    """Send attempt `attempt` of a webhook delivery (after `countdown` seconds); call only after the
    delivery row is committed."""
    producer.send_task(
        DELIVER_WEBHOOK_TASK, args=[delivery_id, attempt], queue=WEBHOOK_QUEUE, countdown=countdown
    )


def waiting_message_count(producer: Celery, queue: str = GPU_QUEUE) -> int:
    """Messages waiting in `queue` on the broker (not those a worker holds); 0 for a queue the broker
    does not know, e.g. a Redis that restarted and lost its lists."""
    with producer.connection_for_read() as conn:
        try:
            declared = conn.default_channel.queue_declare(queue=queue, passive=True)
        except ChannelError:
            return 0
        count: int = declared.message_count
        return count

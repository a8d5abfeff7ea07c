"""The Celery app of the GPU worker: `celery -A worker.celery_app worker -Q mapo.gpu`.

One training at a time per process (concurrency 1, prefetch 1), acknowledged late so a message is only
gone once its job has ended, and a fresh child per task so each training starts with clean GPU memory.
The job row, not the broker, is the source of truth: a redelivered message finds the row claimed.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from core.queue import GPU_QUEUE, celery_config
from core.settings import Settings

# Longer than any training, so Redis never hands a healthy running job to a second worker.
REDIS_VISIBILITY_TIMEOUT_S = 7 * 24 * 3600


def worker_config(settings: Settings) -> dict[str, Any]:
    config = celery_config(settings)
    if settings.broker_url.startswith(("redis", "rediss")):
        config["broker_transport_options"] = {"visibility_timeout": REDIS_VISIBILITY_TIMEOUT_S}
    config |= {
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,
        "worker_max_tasks_per_child": 1,
        "task_queues": None,
        "task_default_queue": GPU_QUEUE,
        "include": ["worker.tasks"],
    }
    return config


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings()
    settings.ensure_dirs()
    celery = Celery("mapo-worker")
    celery.conf.update(worker_config(settings))
    return celery


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    # A forked child must not reuse the parent's pooled database connections.
    from worker.context import get_context

    get_context.cache_clear()


app = create_app()

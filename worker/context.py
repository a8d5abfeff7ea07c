"""Per-process resources of a worker: settings, database, storage and this worker's id."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import cache, cached_property

from celery import Celery

from core.db import Database
from core.queue import make_producer
from core.settings import Settings
from core.storage import Storage, build_storage


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    db: Database
    storage: Storage
    worker_id: str

    @cached_property
    def producer(self) -> Celery:
        """Sends tasks from this process (webhook deliveries of the job's events)."""
        return make_producer(self.settings)


_node: dict[str, str] = {}


def set_node_name(name: str) -> None:
    """The Celery node name (`-n`, e.g. gpu1@host) of this worker; set in the main process before fork."""
    _node["name"] = name


@cache
def get_context() -> WorkerContext:
    """Built lazily in the process that runs tasks (after Celery's fork), once."""
    settings = Settings()
    settings.ensure_dirs()
    return WorkerContext(
        settings=settings,
        db=Database(settings),
        storage=build_storage(settings),
        # The node name ties a job row to its `workers` row; the pid tells the pool children apart.
        worker_id=f"{_node.get('name', socket.gethostname())}:{os.getpid()}",
    )

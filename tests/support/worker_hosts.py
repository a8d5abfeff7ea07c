"""Workers on other machines, as the runner sees them."""

from __future__ import annotations

from pathlib import Path

from core.db import Database
from core.settings import Settings
from core.storage import build_storage
from worker.context import WorkerContext


def host(settings: Settings, database: Database, data_dir: Path, name: str) -> WorkerContext:
    """A worker on another machine: its own data_dir (cache, work dir), the same database and storage
    (a local storage directory is shared between the hosts, as a network mount would be)."""
    own = settings.model_copy(update={"data_dir": data_dir, "storage_dir": settings.storage_root})
    own.ensure_dirs()
    return WorkerContext(own, database, build_storage(own), f"{name}:1")

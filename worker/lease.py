"""A worker's hold on the job it runs: the heartbeat that keeps it, the check that it is still this
worker's, and the stop signal the trainer polls.

Each stamp of the heartbeat reads the job's status back: `cancelling` (a cancel was asked for) or losing
the job (this worker fell silent past the heartbeat timeout, say cut off the network, and the job was
requeued, perhaps to run elsewhere) sets `stop_requested`; a lost job also sets `lost_ownership`, after
which the worker writes nothing more into it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from core.db import Database
from core.models import JobStatus
from core.repositories import jobs as job_repo

log = logging.getLogger(__name__)


class LostJob(Exception):
    """Raised inside a write transaction to roll it back: the job is no longer this worker's."""


class JobLease:
    def __init__(self, db: Database, job_id: str, *, worker_id: str, beat_seconds: float) -> None:
        self.db, self.job_id, self.worker_id = db, job_id, worker_id
        self.beat_seconds = beat_seconds
        self.stop_requested = threading.Event()
        self.lost_ownership = False

    def stamp_in(self, session: Session) -> JobStatus:
        """Stamp the heartbeat in `session`'s transaction, first in it: the UPDATE locks the job row, so
        what the transaction writes next cannot race a takeover. Raises LostJob if the job is not ours."""
        status = job_repo.heartbeat(session, self.job_id, worker_id=self.worker_id)
        if status is None:
            raise LostJob(self.job_id)
        return status

    def renew(self) -> bool:
        """Stamp the heartbeat in a transaction of its own and act on the status read back; whether the
        job is still this worker's."""
        with self.db.session_scope() as session:
            status = job_repo.heartbeat(session, self.job_id, worker_id=self.worker_id)
        self.observe(status)
        return status is not None

    def observe(self, status: JobStatus | None) -> None:
        """Act on the status a heartbeat read back (None: the job is no longer this worker's)."""
        if status is None:
            self.lost_ownership = True
        if status != JobStatus.RUNNING:
            self.stop_requested.set()

    @contextmanager
    def kept_alive(self) -> Iterator[None]:
        """Renew the lease every `beat_seconds` in a thread of its own while the block runs (a slow upload
        of a big checkpoint must never look like a dead worker)."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.beat_seconds):
                try:
                    self.renew()
                except Exception:
                    log.warning("job %s: heartbeat during an upload failed", self.job_id, exc_info=True)

        thread = threading.Thread(target=beat, name=f"lease-{self.job_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

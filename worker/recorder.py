"""Records a running job: trainer events become rows, written in batches by a background thread.

`__call__` (the trainer's `on_event`) only appends to a queue, with the time, so a slow database never
stalls a training step and each event row keeps the time it happened rather than the time of its batch.
Every `flush_seconds` the flusher writes what has queued up in one transaction, stamps the job's
heartbeat and reads its status back (files the events name are uploaded first, `JobOutputs.publish`, so a
row never points at a file the store lacks; the heartbeat goes on while they upload, so a slow upload
of a big checkpoint never looks like a dead worker): `cancelling` (or losing the job to another worker) sets
`stop_requested`, which the trainer polls through `should_stop`. A failed write is retried at the next
tick with the same rows, and event ids come from the job row, so nothing is lost. Nor is anything written
twice: a write whose COMMIT failed without an answer (the connection dropped while it was in flight) may
have landed, so before writing those rows again the flusher looks for the first of them in the log.
A job this worker no longer holds (it fell silent past the heartbeat timeout, say cut off the network,
and the job was requeued) gets nothing more from it: no rows, no uploads; the trainer is told to stop.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from celery import Celery
from sqlalchemy.orm import Session

from core.db import Database
from core.models import utcnow
from core.repositories import events as event_repo
from core.repositories import jobs as job_repo
from core.repositories import metrics as metric_repo
from core.repositories import outputs as output_repo
from core.storage import Storage, file_sha256
from core.webhooks import outbox as webhook_outbox
from trainer.events import Event
from worker.staging import JobOutputs
from worker.translate import Writes, translate

log = logging.getLogger(__name__)


class Recorder:
    def __init__(
        self,
        db: Database,
        job_id: str,
        *,
        worker_id: str,
        outputs: JobOutputs,
        producer: Celery,
        flush_seconds: float = 1.0,
    ) -> None:
        self.db, self.job_id, self.worker_id, self.outputs = db, job_id, worker_id, outputs
        self.producer = producer
        self.flush_seconds = flush_seconds
        self.stop_requested = threading.Event()
        self.lost_ownership = False
        self._queue: queue.SimpleQueue[tuple[Event, datetime]] = queue.SimpleQueue()
        self._pending: list[tuple[Event, datetime]] = []
        self._in_doubt = 0  # how many of the pending events a failed write may have committed anyway
        self._last_seq = 0  # the newest event id this recorder knows it wrote
        self._closing = threading.Event()
        self._eta = EtaEstimator()
        self._thread = threading.Thread(target=self._run, name=f"recorder-{job_id}", daemon=True)

    def __call__(self, event: Event) -> None:
        self._queue.put((event, utcnow()))

    def start(self) -> Recorder:
        self._thread.start()
        return self

    def close(self, *, attempts: int = 5, backoff_seconds: float = 1.0) -> None:
        """Stop the flusher after a last flush, retried with backoff (the database may be restarting);
        raises the last error if the rows still could not be written."""
        self._closing.set()
        self._thread.join()
        self._drain()
        for attempt in range(attempts):
            try:
                self._flush()
                return
            except Exception:
                if attempt == attempts - 1:
                    raise
                log.warning("job %s: final write failed (attempt %d); retrying", self.job_id, attempt + 1)
                time.sleep(backoff_seconds * 2**attempt)

    def _run(self) -> None:
        while not self._closing.wait(self.flush_seconds):
            self._drain()
            try:
                self._flush()
            except Exception:
                log.exception("job %s: writing events failed; retrying at the next tick", self.job_id)

    def _drain(self) -> None:
        while True:
            try:
                self._pending.append(self._queue.get_nowait())
            except queue.Empty:
                return

    def _flush(self) -> None:
        """Write the pending events (if any) and the heartbeat in one transaction."""
        if self._in_doubt:
            self._forget_what_landed()
        events, times = [e for e, _ in self._pending], [at for _, at in self._pending]
        writes = translate(events, self.outputs.key_of, times=times)
        if self.outputs.remote and (writes.checkpoints or writes.samples or writes.artifacts):
            if not self._still_ours():  # uploading would overwrite (and prune) the new owner's files
                return
            with self._heartbeat_meanwhile():
                self.outputs.publish(writes)
        try:
            with self.db.session_scope() as session:
                # First: it locks the job row, and a job this worker no longer holds gets none of the rest.
                status = job_repo.heartbeat(session, self.job_id, worker_id=self.worker_id)
                if status is None:
                    raise _TakenOver
                ids = _apply(session, self.job_id, writes, self._eta.observe(writes))
                if writes.checkpoints:
                    _forget_pruned_checkpoints(session, self.job_id, self.outputs.storage)
                for checkpoint in writes.checkpoints:
                    details = {"checkpoint": {"step": checkpoint.step, "metrics": checkpoint.metrics}}
                    webhook_outbox.record_event(
                        session, self.job_id, "checkpoint", producer=self.producer, details=details
                    )
        except _TakenOver:
            self._let_go()
            return
        except Exception:
            self._in_doubt = len(self._pending)
            raise
        self._pending, self._last_seq = [], max(ids, default=self._last_seq)
        self._observe_status(status)

    def _still_ours(self) -> bool:
        """Stamp the heartbeat; if the job is no longer this worker's, let go."""
        if self._stamp_heartbeat() is None:
            self._let_go()
            return False
        return True

    def _stamp_heartbeat(self) -> str | None:
        """Stamp the heartbeat in a transaction of its own and act on the status read back."""
        with self.db.session_scope() as session:
            status = job_repo.heartbeat(session, self.job_id, worker_id=self.worker_id)
        self._observe_status(status)
        return status

    def _let_go(self) -> None:
        """The job was requeued (this worker fell silent for too long) and may run elsewhere by now: drop
        what is pending, write nothing more into it, and have the trainer stop."""
        log.warning("job %s is no longer this worker's; dropping %d events", self.job_id, len(self._pending))
        self._pending, self._in_doubt = [], 0
        self._observe_status(None)

    def _forget_what_landed(self) -> None:
        """The last write failed, perhaps after its COMMIT reached the server: if its first event is in the
        log, the whole transaction landed, so its events are dropped from the pending ones."""
        event, happened_at = self._pending[0]
        with self.db.session_scope() as session:
            landed = event_repo.has_event(
                session, self.job_id, after=self._last_seq, type=event.type, created_at=happened_at
            )
        if landed:
            log.warning("job %s: the write that failed had landed; not writing it again", self.job_id)
            del self._pending[: self._in_doubt]
        self._in_doubt = 0

    def _observe_status(self, status: str | None) -> None:
        if status is None:
            self.lost_ownership = True
        if status != "running":
            self.stop_requested.set()

    @contextmanager
    def _heartbeat_meanwhile(self) -> Iterator[None]:
        """Stamp the heartbeat every `flush_seconds` in a thread of its own while the block runs."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.flush_seconds):
                try:
                    self._stamp_heartbeat()
                except Exception:
                    log.warning("job %s: heartbeat during an upload failed", self.job_id, exc_info=True)

        thread = threading.Thread(target=beat, name=f"upload-heartbeat-{self.job_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()


class _TakenOver(Exception):
    """Raised inside the write transaction to roll it back: the job is no longer this worker's."""


class EtaEstimator:
    """Seconds left, from the wall time of the steps seen in this run (so start-up is not counted)."""

    def __init__(self) -> None:
        self._first: tuple[float, int] | None = None
        self.eta: float | None = None

    def observe(self, writes: Writes) -> float | None:
        step = writes.last_step
        if step is None:
            return self.eta
        now = time.monotonic()
        if self._first is None:
            self._first = (now, step.step)
            return self.eta
        seconds, steps = now - self._first[0], step.step - self._first[1]
        if steps > 0:
            self.eta = seconds / steps * (step.total_steps - step.step)
        return self.eta


def _apply(session: Session, job_id: str, writes: Writes, eta: float | None) -> list[int]:
    """Write `writes` in `session`; returns the ids of the events appended."""
    ids = event_repo.append_events(session, job_id, writes.events)
    metric_repo.add_metrics(session, job_id, writes.metrics)
    if writes.last_step is not None:
        step = writes.last_step
        job_repo.update_progress(
            session,
            job_id,
            step=step.step,
            total_steps=step.total_steps,
            eta_seconds=eta,
            latest_metrics=step.metrics,
        )
    for checkpoint in writes.checkpoints:
        output_repo.add_checkpoint(
            session,
            job_id,
            step=checkpoint.step,
            storage_key=checkpoint.storage_key,
            metrics=checkpoint.metrics,
        )
    for sample in writes.samples:
        output_repo.add_sample(
            session,
            job_id,
            step=sample.step,
            index=sample.index,
            prompt=sample.prompt,
            with_lora=sample.with_lora,
            storage_key=sample.storage_key,
        )
    for artifact in writes.artifacts:
        with artifact.path.open("rb") as stream:
            stored = file_sha256(stream)
        output_repo.add_artifact(
            session,
            job_id,
            format=artifact.format,
            storage_key=artifact.storage_key,
            size_bytes=stored.bytes,
            sha256=stored.sha256,
        )
    return ids


def _forget_pruned_checkpoints(session: Session, job_id: str, storage: Storage) -> None:
    """The trainer keeps only the newest few checkpoints on disk; drop the rows of those it deleted."""
    for checkpoint in output_repo.list_checkpoints(session, job_id):
        if not storage.exists(checkpoint.storage_key):
            output_repo.delete_checkpoint(session, job_id, step=checkpoint.step)

"""Records a running job: trainer events become rows, written in batches by a background thread.

`__call__` (the trainer's `on_event`) only appends to a queue, with the time, so a slow database never
stalls a training step and each event row keeps the time it happened rather than the time of its batch.
Every `flush_seconds` the flusher writes what has queued up in one transaction that first stamps the
job's heartbeat (its `JobLease`, worker/lease.py, which also says when to stop). Storage is done with
before that transaction opens, so no object-store call ever runs while it holds the job's row: the files
the events name are uploaded first (`JobOutputs.publish`, under a lease kept alive meanwhile, so a row
never points at a file the store lacks) and the stored checkpoints are listed then, to drop the rows of
those the trainer rotated away.

A failed write is retried at the next tick with the same rows, and event ids come from the job row, so
nothing is lost. Nor is anything written twice: a write whose COMMIT failed without an answer (the
connection dropped while it was in flight) may have landed, so before writing those rows again the
flusher looks for the first of them in the log. A job this worker no longer holds gets nothing more
from it: no rows, no uploads; the trainer is told to stop.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import datetime

from celery import Celery
from sqlalchemy.orm import Session

from core.db import Database
from core.models import utcnow
from core.repositories import events as event_repo
from core.repositories import jobs as job_repo
from core.repositories import metrics as metric_repo
from core.repositories import outputs as output_repo
from core.storage import file_sha256
from core.webhooks import outbox as webhook_outbox
from trainer.checkpoints import CHECKPOINTS_DIR
from trainer.events import Event
from worker.lease import JobLease, LostJob
from worker.staging import JobOutputs
from worker.translate import Writes, translate

log = logging.getLogger(__name__)


class Recorder:
    """The event sink of one job: queue, batched writes, and the check of a write in doubt."""

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
        self.db, self.job_id, self.outputs, self.producer = db, job_id, outputs, producer
        self.flush_seconds = flush_seconds
        self.lease = JobLease(db, job_id, worker_id=worker_id, beat_seconds=flush_seconds)
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
        """Store the files the pending events name, then write the events (if any) and the heartbeat in
        one transaction."""
        if self._in_doubt:
            self._forget_what_landed()
        events, times = [e for e, _ in self._pending], [at for _, at in self._pending]
        writes = translate(events, self.outputs.key_of, times=times)
        if not self._store_files(writes):
            return
        kept = self._stored_checkpoints() if writes.checkpoints else None
        try:
            with self.db.session_scope() as session:
                status = self.lease.stamp_in(session)
                ids = _apply(session, self.job_id, writes, self._eta.observe(writes))
                if kept is not None:
                    _forget_pruned_checkpoints(session, self.job_id, kept)
                self._record_checkpoint_webhooks(session, writes)
        except LostJob:
            self._let_go()
            return
        except Exception:
            self._in_doubt = len(self._pending)
            raise
        self._pending, self._last_seq = [], max(ids, default=self._last_seq)
        self.lease.observe(status)

    def _store_files(self, writes: Writes) -> bool:
        """Upload what `writes` names to an object store; False (having let go) if the job is no longer
        this worker's, whose upload would overwrite (and prune) the new owner's files."""
        if not self.outputs.remote or not (writes.checkpoints or writes.samples or writes.artifacts):
            return True
        if not self.lease.renew():
            self._let_go()
            return False
        with self.lease.kept_alive():
            self.outputs.publish(writes)
        return True

    def _stored_checkpoints(self) -> set[str]:
        """Storage keys of the checkpoint folders the store holds now (the trainer keeps only the newest
        few): one listing, before the write transaction opens."""
        root = f"{self.outputs.key}/{CHECKPOINTS_DIR}"
        return {
            f"{root}/{key.removeprefix(root + '/').split('/')[0]}"
            for key in self.outputs.storage.list_keys(root)
        }

    def _record_checkpoint_webhooks(self, session: Session, writes: Writes) -> None:
        for checkpoint in writes.checkpoints:
            details = {"checkpoint": {"step": checkpoint.step, "metrics": checkpoint.metrics}}
            webhook_outbox.record_event(
                session, self.job_id, "checkpoint", producer=self.producer, details=details
            )

    def _let_go(self) -> None:
        """The job was requeued (this worker fell silent for too long) and may run elsewhere by now: drop
        what is pending, write nothing more into it, and have the trainer stop."""
        log.warning("job %s is no longer this worker's; dropping %d events", self.job_id, len(self._pending))
        self._pending, self._in_doubt = [], 0
        self.lease.observe(None)

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


def _forget_pruned_checkpoints(session: Session, job_id: str, stored: set[str]) -> None:
    """The trainer keeps only the newest few checkpoints; drop the rows of those no longer `stored`."""
    for checkpoint in output_repo.list_checkpoints(session, job_id):
        if checkpoint.storage_key not in stored:
            output_repo.delete_checkpoint(session, job_id, step=checkpoint.step)

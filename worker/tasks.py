"""Celery tasks: thin adapters from a message (a job id) to the runner."""

from __future__ import annotations

from celery.exceptions import Reject

from core.queue import TRAIN_JOB_TASK
from worker import shutdown
from worker.celery_app import app
from worker.context import get_context
from worker.retry import TRANSIENT_DATABASE_ERRORS
from worker.runner import run_job


# A delivery that cannot reach the database (to claim the job) is re-sent with backoff, 2 s doubling to
# 2 min, for about an hour and a half, instead of being dropped while the job waits `queued` forever.
@app.task(
    name=TRAIN_JOB_TASK,
    acks_late=True,
    ignore_result=True,
    autoretry_for=TRANSIENT_DATABASE_ERRORS,
    retry_backoff=2,
    retry_backoff_max=120,
    retry_jitter=False,
    max_retries=50,
)
def train_job(job_id: str) -> str:
    """Train the job `job_id` (re-read from the database); a repeat delivery is a no-op."""
    # Here, not at fork: billiard points the child's termination signals at its own handler after
    # the process-init hooks have run.
    shutdown.install_child_handler()
    if shutdown.requested():
        raise Reject(f"worker is shutting down; job {job_id} goes back to the queue", requeue=True)
    return run_job(job_id, get_context())

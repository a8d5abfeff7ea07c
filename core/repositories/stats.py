"""Service-wide aggregates read at scrape time for the Prometheus endpoint (across all tenants)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.models import Job, WebhookDelivery


@dataclass(frozen=True)
class RunningJob:
    """A job a worker holds, with what its recorder last wrote."""

    job_id: str
    worker_id: str
    step: int
    total_steps: int
    eta_seconds: float | None
    step_time_s: float | None
    heartbeat_at: datetime | None


def jobs_by_status(session: Session) -> dict[str, int]:
    """{status: number of jobs}; statuses without jobs are absent."""
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
    return {status: count for status, count in rows}


def running_jobs(session: Session) -> list[RunningJob]:
    """Jobs running (or being cancelled) on a worker, by worker."""
    stmt = select(
        Job.id,
        Job.worker_id,
        Job.step,
        Job.total_steps,
        Job.eta_seconds,
        Job.latest_metrics,
        Job.heartbeat_at,
    ).where(Job.status.in_(("running", "cancelling")), Job.worker_id.is_not(None))
    found = []
    for job_id, worker_id, step, total, eta, metrics, heartbeat in session.execute(
        stmt.order_by(Job.worker_id)
    ):
        assert worker_id is not None  # filtered above
        step_time = (metrics or {}).get("step_time_s")
        found.append(RunningJob(job_id, worker_id, step, total, eta, step_time, heartbeat))
    return found


def webhook_deliveries_by_status(session: Session) -> dict[str, int]:
    """{status: number of webhook deliveries}."""
    rows = session.execute(select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status))
    return {status: count for status, count in rows}

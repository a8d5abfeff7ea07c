"""Job events → webhook deliveries. Called in the transaction that records the event: one delivery row
per hook of the job subscribed to it, sent to the webhook queue once that transaction commits, so a
rolled-back state change sends nothing and a committed one is never forgotten (a message lost on the
way is re-sent by the webhook sender's sweep, see worker/webhooks/sender.py)."""

from __future__ import annotations

import json
from typing import Any

from celery import Celery
from sqlalchemy.orm import Session

from core.db import after_commit
from core.models import Job, WebhookEvent, utcnow
from core.queue import enqueue_webhook_delivery
from core.repositories import jobs as job_repo
from core.repositories import webhooks as webhook_repo


def record_event(
    session: Session,
    job_id: str,
    event: WebhookEvent,
    *,
    producer: Celery,
    details: dict[str, Any] | None = None,
) -> list[str]:
    """Queue `event` of the job for every hook that asked for it; returns the delivery ids (webhook-ids)."""
    job = job_repo.get_job_any_tenant(session, job_id)
    if job is None:
        return []
    urls = [hook["url"] for hook in job.webhooks or [] if event in hook.get("events", ())]
    if not urls:
        return []
    body = payload(job, event, details or {})
    ids = [
        webhook_repo.add_delivery(session, job_id=job.id, url=url, event=event, payload=body).id
        for url in urls
    ]
    after_commit(session, lambda: _send(producer, ids))
    return ids


def payload(job: Job, event: WebhookEvent, details: dict[str, Any]) -> str:
    """The JSON body: `{"type": "job.<event>", "timestamp", "data": {job_id, status, progress, error,
    metadata, …details}}`, the job as it is in this transaction."""
    error = {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None
    data = {
        "job_id": job.id,
        "status": job.status,
        "step": job.step,
        "total_steps": job.total_steps,
        "error": error,
        "metadata": job.metadata_,
        **details,
    }
    message = {"type": f"job.{event}", "timestamp": utcnow().isoformat(), "data": data}
    return json.dumps(message, separators=(",", ":"))


def _send(producer: Celery, delivery_ids: list[str]) -> None:
    for delivery_id in delivery_ids:
        enqueue_webhook_delivery(producer, delivery_id, attempt=1)

"""Webhooks: the tenant's signing secret (shown to its API keys, rotated on request) and the delivery log
of a job."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from api.deps import AppContext
from api.schemas import ListResponse, WebhookAttemptOut, WebhookDeliveryOut, WebhookSecretOut
from api.services.jobs import require_job
from core.models import Tenant, WebhookAttempt, WebhookDelivery, WebhookSecret, utcnow
from core.repositories import webhooks as webhook_repo


def get_secret(session: Session, tenant: Tenant) -> WebhookSecretOut:
    """The tenant's secret, created on first request."""
    return secret_out(webhook_repo.ensure_secret(session, tenant.id))


def rotate_secret(session: Session, context: AppContext, tenant: Tenant) -> WebhookSecretOut:
    """A new secret; the old one keeps signing beside it for the configured grace period."""
    grace = timedelta(seconds=context.settings.webhook_secret_grace_seconds)
    return secret_out(webhook_repo.rotate_secret(session, tenant.id, grace=grace))


def secret_out(row: WebhookSecret) -> WebhookSecretOut:
    expires = row.previous_expires_at
    return WebhookSecretOut(
        secret=row.secret,
        created_at=row.created_at,
        previous_secret_expires_at=expires if expires is not None and expires > utcnow() else None,
    )


def list_deliveries(
    session: Session, tenant: Tenant, job_id: str, *, after: str | None, limit: int
) -> ListResponse[WebhookDeliveryOut]:
    """The job's deliveries, oldest first, each with its attempts (404 for another tenant's job)."""
    job = require_job(session, tenant, job_id)
    page = webhook_repo.list_deliveries(session, job.id, after=after, limit=limit)
    attempts = webhook_repo.attempts_of(session, [d.id for d in page.items])
    data = [delivery_out(d, attempts[d.id]) for d in page.items]
    return ListResponse[WebhookDeliveryOut](data=data, has_more=page.has_more)


def delivery_out(delivery: WebhookDelivery, attempts: list[WebhookAttempt]) -> WebhookDeliveryOut:
    return WebhookDeliveryOut.model_validate(
        {
            "id": delivery.id,
            "event": delivery.event,
            "url": delivery.url,
            "status": delivery.status,
            "next_attempt_at": delivery.next_attempt_at if delivery.status == "pending" else None,
            "created_at": delivery.created_at,
            "finished_at": delivery.finished_at,
            "attempts": [
                WebhookAttemptOut(
                    number=a.number,
                    started_at=a.started_at,
                    duration_ms=a.duration_ms,
                    response_status=a.response_status,
                    error=a.error,
                )
                for a in attempts
            ],
        }
    )

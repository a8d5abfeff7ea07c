"""Webhook routes: the tenant's signing secret, and the deliveries of a job with every attempt."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import ContextDep, CurrentTenant, SessionDep
from api.schemas import ErrorResponse, ListResponse, WebhookDeliveryOut, WebhookSecretOut
from api.services import webhooks as service

router = APIRouter(prefix="/v1", tags=["webhooks"])


@router.get("/webhooks/secret")
def get_webhook_secret(session: SessionDep, tenant: CurrentTenant) -> WebhookSecretOut:
    """Your webhook signing secret (created on first request); verify each delivery with it."""
    return service.get_secret(session, tenant)


@router.post("/webhooks/secret/rotate")
def rotate_webhook_secret(
    session: SessionDep, context: ContextDep, tenant: CurrentTenant
) -> WebhookSecretOut:
    """Replace your webhook secret; the old one also signs deliveries for 24 hours (configurable)."""
    return service.rotate_secret(session, context, tenant)


@router.get("/jobs/{job_id}/webhook-deliveries", responses={404: {"model": ErrorResponse}})
def list_webhook_deliveries(
    session: SessionDep,
    tenant: CurrentTenant,
    job_id: str,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size.")] = 50,
    after: Annotated[str | None, Query(description="Id of the last delivery of the previous page.")] = None,
) -> ListResponse[WebhookDeliveryOut]:
    """The job's webhook deliveries, oldest first, each with its attempts and their outcomes."""
    return service.list_deliveries(session, tenant, job_id, after=after, limit=limit)

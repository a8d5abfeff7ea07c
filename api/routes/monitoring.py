"""Prometheus metrics (no authentication: expose it only to the monitoring network)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    description="Needs no API key: expose it only to your monitoring network. Job figures are read from "
    "the database at each scrape; HTTP latency and upload bytes are this API process's.",
)
def metrics(request: Request) -> Response:
    """Prometheus text format: jobs by status, queue depth, worker speed, webhooks, HTTP latency, uploads."""
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)

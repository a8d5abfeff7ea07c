"""Prometheus metrics of the service, served at GET /metrics (no API key: operators keep it off the
public network).

Counters of this process (HTTP latency, upload bytes) live here; job and webhook figures are read from
the database at each scrape by `DatabaseCollector`, so every API process reports the same service-wide
numbers and nothing is lost when a process restarts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from api.request_monitoring import RequestMetricsMiddleware
from core.db import Database
from core.models import JOB_STATUSES, utcnow
from core.repositories import stats as stats_repo
from core.repositories.stats import RunningJob
from core.storage import ABORTED_UPLOADS, DELETE_FAILURES

log = logging.getLogger(__name__)

HTTP_LATENCY = Histogram(
    "mapo_http_request_duration_seconds",
    "Time from a request's arrival to its response headers (an event stream counts until it opens), "
    "by route template, method and status.",
    ["route", "method", "status"],
    registry=None,
)
UPLOAD_BYTES = Counter(
    "mapo_upload_bytes", "Bytes of dataset uploads received in full (accepted or rejected).", registry=None
)
DELIVERY_STATUSES = ("pending", "succeeded", "failed")


def record_upload(size_bytes: int) -> None:
    """Count a received dataset upload (the upload path's one hook)."""
    UPLOAD_BYTES.inc(size_bytes)


def install(app: FastAPI, database: Database) -> None:
    """Time every request and serve GET /metrics from a registry of this app."""
    from api.routes import monitoring as monitoring_route

    registry = CollectorRegistry(auto_describe=False)
    storage_counters = (DELETE_FAILURES, ABORTED_UPLOADS)
    for collector in (HTTP_LATENCY, UPLOAD_BYTES, *storage_counters, DatabaseCollector(database)):
        registry.register(collector)
    app.state.metrics_registry = registry
    app.add_middleware(RequestMetricsMiddleware, histogram=HTTP_LATENCY)
    app.include_router(monitoring_route.router)


class DatabaseCollector(Collector):
    """Jobs by status, queue depth, the speed of each running job's worker and webhook deliveries, read
    from the database when scraped; if it cannot be read, `mapo_database_up` is 0 and the rest absent."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def collect(self) -> Iterator[Metric]:
        try:
            with self.database.sessions() as session:
                jobs = stats_repo.jobs_by_status(session)
                running = stats_repo.running_jobs(session)
                deliveries = stats_repo.webhook_deliveries_by_status(session)
        except Exception as exc:
            log.warning("metrics: the database could not be read: %s", type(exc).__name__)
            yield GaugeMetricFamily("mapo_database_up", "Whether /metrics could read the database.", value=0)
            return
        yield GaugeMetricFamily("mapo_database_up", "Whether /metrics could read the database.", value=1)
        yield _by_label("mapo_jobs", "Jobs by status.", "status", {s: jobs.get(s, 0) for s in JOB_STATUSES})
        queued = jobs.get("queued", 0)
        yield GaugeMetricFamily("mapo_queue_depth", "Jobs queued and waiting for a worker.", value=queued)
        yield from _worker_speed(running, now=utcnow())
        counts = {s: deliveries.get(s, 0) for s in DELIVERY_STATUSES}
        yield _by_label("mapo_webhook_deliveries", "Webhook deliveries by status.", "status", counts)


def _by_label(name: str, documentation: str, label: str, values: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for value_label, value in values.items():
        family.add_metric([value_label], value)
    return family


def _worker_speed(running: list[RunningJob], *, now: datetime) -> Iterator[Metric]:
    labels = ["worker", "job"]
    rate = GaugeMetricFamily(
        "mapo_worker_steps_per_second",
        "Optimizer steps per second of wall time since the job's current run began on this worker "
        "(data loading, validation images and checkpoints included).",
        labels=labels,
    )
    step_time = GaugeMetricFamily(
        "mapo_worker_step_seconds", "Duration of the latest optimizer step of the job.", labels=labels
    )
    age = GaugeMetricFamily(
        "mapo_worker_heartbeat_age_seconds", "Seconds since the worker last stamped the job.", labels=labels
    )
    for job in running:
        key = [job.worker_id, job.job_id]
        remaining = job.total_steps - job.step
        # The recorder's ETA is remaining steps / this run's rate, so the rate comes back exactly.
        if job.eta_seconds and remaining > 0:
            rate.add_metric(key, remaining / job.eta_seconds)
        if job.step_time_s is not None:
            step_time.add_metric(key, job.step_time_s)
        if job.heartbeat_at is not None:
            age.add_metric(key, max(0.0, (now - job.heartbeat_at).total_seconds()))
    yield from (rate, step_time, age)

"""Metric points of a job, written in batches and read back as one series per name."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Metric
from core.repositories.upsert import upsert_rows


class MetricPoint(NamedTuple):
    step: int
    name: str
    value: float


def add_metrics(session: Session, job_id: str, points: Iterable[MetricPoint]) -> None:
    """Insert points in batches; a point for an existing (name, step) replaces it (resumed steps)."""
    rows = [{"job_id": job_id, "step": p.step, "name": p.name, "value": float(p.value)} for p in points]
    upsert_rows(session, Metric, rows, conflict=("job_id", "name", "step"), update=("value",))


def metric_series(session: Session, job_id: str) -> dict[str, list[tuple[int, float]]]:
    """{name: [(step, value), …]} with steps ascending."""
    stmt = select(Metric.name, Metric.step, Metric.value).where(Metric.job_id == job_id)
    series: dict[str, list[tuple[int, float]]] = {}
    for name, step, value in session.execute(stmt.order_by(Metric.name, Metric.step)):
        series.setdefault(name, []).append((step, value))
    return series

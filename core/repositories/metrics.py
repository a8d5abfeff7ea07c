"""Metric points of a job, written in batches and read back as one series per name (whole or thinned)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from core.models import Metric
from core.repositories.upsert import upsert_rows

Series = dict[str, list[tuple[int, float]]]


class MetricPoint(NamedTuple):
    step: int
    name: str
    value: float


class _Grid(NamedTuple):
    """Where a long series is sampled: from `first` to `last` in multiples of its own `spacing`."""

    first: int
    spacing: int
    last: int

    def steps(self, max_points: int) -> list[int]:
        """At most `max_points` steps, evenly spaced, the first and the last included."""
        stride = self.spacing * math.ceil((self.last - self.first) / (self.spacing * (max_points - 1)))
        return [*range(self.first, self.last, stride), self.last]


def add_metrics(session: Session, job_id: str, points: Iterable[MetricPoint]) -> None:
    """Insert points in batches; a point for an existing (name, step) replaces it (resumed steps)."""
    rows = [{"job_id": job_id, "step": p.step, "name": p.name, "value": float(p.value)} for p in points]
    upsert_rows(session, Metric, rows, conflict=("job_id", "name", "step"), update=("value",))


def metric_series(session: Session, job_id: str, *, max_points: int | None = None) -> Series:
    """{name: [(step, value), …]} with steps ascending, names sorted.

    With `max_points` (at least 2), a series longer than that keeps at most `max_points` of its points:
    its first and last, and between them those on an even grid of steps whose spacing is a multiple of
    the spacing of the series' first two points (so a series logged every step, or every N steps, is
    sampled exactly on its own points). Then the cost grows with `max_points` and the number of names,
    not with the length of the job: a 100,000-step job answers in milliseconds instead of seconds.
    """
    if max_points is not None and max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    every = select(Metric.name, Metric.step, Metric.value).where(Metric.job_id == job_id)
    if max_points is None or _has_at_most(session, job_id, max_points):
        return _rows_to_series(session, every)
    short: list[str] = []
    long: dict[_Grid, list[str]] = {}
    for name in _names(session, job_id):
        grid = _grid_if_longer(session, job_id, name, max_points)
        if grid is None:
            short.append(name)
        else:
            long.setdefault(grid, []).append(name)
    series = _rows_to_series(session, every.where(Metric.name.in_(short))) if short else {}
    for grid, names in long.items():
        sampled = every.where(Metric.name.in_(names), Metric.step.in_(grid.steps(max_points)))
        series |= _rows_to_series(session, sampled)
    return dict(sorted(series.items()))


def _has_at_most(session: Session, job_id: str, count: int) -> bool:
    """Whether the job has at most `count` points in all (reads at most count + 1 index entries)."""
    some = select(Metric.step).where(Metric.job_id == job_id).limit(count + 1).subquery()
    return (session.scalar(select(func.count()).select_from(some)) or 0) <= count


def _names(session: Session, job_id: str) -> list[str]:
    """The job's metric names, one index probe each (no scan of the job's points)."""
    names: list[str] = []
    while True:
        after = select(Metric.name).where(Metric.job_id == job_id)
        if names:
            after = after.where(Metric.name > names[-1])
        name = session.scalar(after.order_by(Metric.name).limit(1))
        if name is None:
            return names
        names.append(name)


def _grid_if_longer(session: Session, job_id: str, name: str, max_points: int) -> _Grid | None:
    """None if the series has at most `max_points` points, else the grid to sample it on."""
    of_name = select(Metric.step).where(Metric.job_id == job_id, Metric.name == name)
    head = list(session.scalars(of_name.order_by(Metric.step).limit(max_points + 1)))
    if len(head) <= max_points:
        return None
    last = session.scalar(of_name.order_by(Metric.step.desc()).limit(1))
    assert last is not None
    return _Grid(first=head[0], spacing=head[1] - head[0], last=last)


def _rows_to_series(session: Session, stmt: Select[str, int, float]) -> Series:
    series: Series = {}
    for name, step, value in session.execute(stmt.order_by(Metric.name, Metric.step)):
        series.setdefault(name, []).append((step, value))
    return series

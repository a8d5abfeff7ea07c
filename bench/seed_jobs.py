"""A throw-away PostgreSQL database full of jobs, events and metrics, bulk-loaded with COPY.

One tenant owns every job (the worst case for its listings). One job is long (`long_steps` optimizer
steps: one step event and 11 metric points per step, held-out metrics every 500 steps); the others share
the rest of the events and have 10 steps of metrics each. Rows look like the worker's: the same event
types, step data and metric names as a MaPO run.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

import migrations
from api.schemas import JobCreate
from core.db import Database
from core.models import new_id
from core.repositories import tenants as tenant_repo
from core.settings import DEV_PEPPER, Settings

STEP_METRICS = [
    "loss",
    "chosen_loss",
    "rejected_loss",
    "chosen_score",
    "rejected_score",
    "margin",
    "preference_term",
    "accuracy",
    "grad_norm",
    "lr",
    "step_time_s",
]
EVAL_METRICS = ("heldout_accuracy", "heldout_chosen_loss", "heldout_rejected_loss", "heldout_error_gap")
EVAL_EVERY = 500
SHORT_JOB_STEPS = 10


@dataclass(frozen=True)
class Seeded:
    url: str
    api_key: str
    tenant_id: str
    job_ids: list[str]
    long_job_id: str
    events: int
    metrics: int


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A new database on the server at `server_url`, migrated to head; dropped on exit."""
    server = make_url(server_url)
    name = f"mapo_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        migrations.upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def seed(url: str, *, jobs: int, events: int, long_steps: int) -> Seeded:
    """Fill the migrated database at `url`; returns what the load needs to address it."""
    tenant_id, api_key = _tenant(url)
    job_ids = [new_id("job") for _ in range(jobs)]
    long_job = job_ids[-1]  # the newest, as a job still being watched would be
    per_short = (events - long_steps) // (jobs - 1)
    counts = {job_id: per_short for job_id in job_ids}
    counts[long_job] = events - per_short * (jobs - 1)
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo) as conn:
        _copy_jobs(conn, tenant_id, counts, long_job, long_steps)
        with conn.cursor().copy(
            "COPY job_events (job_id, seq, created_at, level, type, message, data) FROM STDIN"
        ) as copy:
            for job_id in job_ids:
                for row in _event_rows(job_id, counts[job_id]):
                    copy.write_row(row)
        metric_rows = 0
        with conn.cursor().copy("COPY metrics (job_id, step, name, value) FROM STDIN") as copy:
            for job_id in job_ids:
                steps = long_steps if job_id == long_job else SHORT_JOB_STEPS
                for row in _metric_rows(job_id, steps):
                    copy.write_row(row)
                    metric_rows += 1
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # what autovacuum does to settled tables
    return Seeded(url, api_key, tenant_id, job_ids, long_job, events, metric_rows)


def _tenant(url: str) -> tuple[str, str]:
    db = Database(Settings(database_url=url))
    with db.session_scope() as session:
        tenant = tenant_repo.create_tenant(session, "bench")
        _, key = tenant_repo.create_api_key(session, tenant_id=tenant.id, pepper=DEV_PEPPER)
        tenant_id = tenant.id
    db.dispose()
    return tenant_id, key


def _copy_jobs(
    conn: psycopg.Connection[tuple[object, ...]],
    tenant_id: str,
    event_counts: dict[str, int],
    long_job: str,
    long_steps: int,
) -> None:
    """One row per job, oldest first, a minute apart; every job but the long one has succeeded."""
    body = JobCreate.model_validate(
        {
            "dataset_id": "ds_none",
            "base_model": "sdxl-base",
            "method": "mapo",
            "validation": {"prompts": ["a red circle on a white background"], "every_n_steps": 100},
        }
    )
    spec = json.dumps(body.to_spec().model_dump(mode="json"))
    latest = json.dumps(_step_metrics(random.Random(0)))
    now = datetime.now(UTC)
    columns = (
        "id, tenant_id, spec, webhooks, metadata, status, step, "
        "total_steps, latest_metrics, attempts, last_event_seq, created_at, started_at, finished_at"
    )
    with conn.cursor().copy(f"COPY jobs ({columns}) FROM STDIN") as copy:
        for i, (job_id, event_count) in enumerate(event_counts.items()):
            steps = long_steps if job_id == long_job else SHORT_JOB_STEPS
            created = now - timedelta(minutes=len(event_counts) - i)
            status = "running" if job_id == long_job else "succeeded"
            copy.write_row(
                (
                    job_id,
                    tenant_id,
                    spec,
                    "[]",
                    "{}",
                    status,
                    steps,
                    steps,
                    latest,
                    1,
                    event_count,
                    created,
                    created,
                    None if status == "running" else now,
                )
            )


def _event_rows(job_id: str, count: int) -> Iterator[tuple[object, ...]]:
    rng = random.Random(job_id)
    now = datetime.now(UTC)
    heads = [("queued", "job queued on sdxl-base (mapo)", "{}"), ("running", "picked up by bench", "{}")]
    for seq in range(1, count + 1):
        if seq <= len(heads):
            kind, message, data = heads[seq - 1]
        else:
            step = seq - len(heads)
            metrics = _step_metrics(rng)
            kind, message = "step", f"step {step}/{count} loss {metrics['loss']:.4f}"
            data = json.dumps({"step": step, "total_steps": count, "metrics": metrics})
        yield job_id, seq, now, "info", kind, message, data


def _metric_rows(job_id: str, steps: int) -> Iterator[tuple[object, ...]]:
    rng = random.Random(job_id)
    for step in range(1, steps + 1):
        for name in STEP_METRICS:
            yield job_id, step, name, rng.random()
    for step in range(0, steps + 1, EVAL_EVERY):
        for name in EVAL_METRICS:
            yield job_id, step, name, rng.random()


def _step_metrics(rng: random.Random) -> dict[str, float]:
    return {name: round(rng.random(), 6) for name in STEP_METRICS}

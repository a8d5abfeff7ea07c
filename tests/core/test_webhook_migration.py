"""Migration 0002 keeps every job and its history, and turns the single hook into the list of hooks."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

import migrations
from tests.support.databases import postgres_server_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables yet (the shared test databases are already at head)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    server = make_url(postgres_server_url())
    name = f"mapo_migration_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _insert_job(url: str, job_id: str, webhook: dict[str, object] | None) -> None:
    now = "2026-01-01T00:00:00+00:00"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO tenants (id, name, created_at) VALUES ('ten_1', 'acme', :now)"), {"now": now}
        )
        conn.execute(
            text(
                "INSERT INTO jobs (id, tenant_id, base_model, method, spec, validation, webhook, metadata,"
                " seed, status, step, total_steps, latest_metrics, attempts, last_event_seq, created_at)"
                " VALUES (:id, 'ten_1', 'tiny-sd', 'mapo', '{}', '{}', :hook, '{}', 0, 'succeeded', 2, 2,"
                " '{}', 1, 1, :now)"
            ),
            {"id": job_id, "hook": json.dumps(webhook), "now": now},
        )
        conn.execute(
            text(
                "INSERT INTO job_events (job_id, seq, created_at, level, type, message, data)"
                " VALUES (:id, 1, :now, 'info', 'succeeded', 'job succeeded', '{}')"
            ),
            {"id": job_id, "now": now},
        )
    engine.dispose()


def _read(url: str, sql: str) -> list[tuple[object, ...]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(text(sql))]
    engine.dispose()
    return rows


def _json(value: object) -> object:
    return json.loads(value) if isinstance(value, str) else value


def test_upgrade_turns_the_single_hook_into_a_list_and_keeps_the_job_history(empty_db_url: str) -> None:
    migrations.upgrade(empty_db_url, "0001")
    hook = {"url": "https://example.com/hook", "events": ["job.running", "job.succeeded"]}
    _insert_job(empty_db_url, "job_1", hook)
    migrations.upgrade(empty_db_url, "0002")
    [(webhooks,)] = _read(empty_db_url, "SELECT webhooks FROM jobs WHERE id = 'job_1'")
    assert _json(webhooks) == [{"url": "https://example.com/hook", "events": ["started", "succeeded"]}]
    # Renaming the column must not rebuild the jobs table: on SQLite that cascades into its events.
    assert _read(empty_db_url, "SELECT seq, type FROM job_events WHERE job_id = 'job_1'") == [
        (1, "succeeded")
    ]


def test_a_job_without_a_hook_gets_an_empty_list_and_downgrade_restores_the_hook(empty_db_url: str) -> None:
    migrations.upgrade(empty_db_url, "0001")
    _insert_job(empty_db_url, "job_2", None)
    migrations.upgrade(empty_db_url, "head")
    [(webhooks,)] = _read(empty_db_url, "SELECT webhooks FROM jobs WHERE id = 'job_2'")
    assert _json(webhooks) == []
    engine = create_engine(empty_db_url)
    with engine.begin() as conn:
        hooks = [{"url": "https://example.com/a", "events": ["succeeded", "checkpoint"]}]
        conn.execute(text("UPDATE jobs SET webhooks = :h WHERE id = 'job_2'"), {"h": json.dumps(hooks)})
    engine.dispose()
    from alembic import command

    command.downgrade(migrations.alembic_config(empty_db_url), "0001")
    [(webhook,)] = _read(empty_db_url, "SELECT webhook FROM jobs WHERE id = 'job_2'")
    assert _json(webhook) == {"url": "https://example.com/a", "events": ["job.succeeded"]}
    assert _read(empty_db_url, "SELECT count(*) FROM job_events WHERE job_id = 'job_2'") == [(1,)]

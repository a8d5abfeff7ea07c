"""Migration 0007 stores a job's request once, in `spec`: it copies the columns that repeated spec fields
into the spec where the spec lacks them, drops them without touching the job's history, and downgrade
restores them from the spec."""

from __future__ import annotations

import json
from typing import Any

from alembic import command
from sqlalchemy import create_engine, inspect, text

import migrations

NOW = "2026-01-01T00:00:00+00:00"
REPEATED_COLUMNS = {"base_model", "method", "validation", "seed"}
# As the API wrote it: the whole TrainSpec dump, which repeats the columns.
FULL_SPEC: dict[str, Any] = {
    "base_model": "tiny-sdxl",
    "method": "mapo",
    "validation": {"prompts": ["a fox"], "every_n_steps": 5},
    "seed": 11,
    "max_train_steps": 20,
}


def _execute(url: str, sql: str, params: dict[str, object] | None = None) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    with engine.begin() as conn:
        result = conn.execute(text(sql), params or {})
        rows = [tuple(r) for r in result] if result.returns_rows else []
    engine.dispose()
    return rows


def _insert_at_0006(url: str) -> None:
    """A tenant, a dataset, a job as the API wrote it, a job whose spec lacks the repeated fields, and an
    event of each job."""
    _execute(url, "INSERT INTO tenants (id, name, created_at) VALUES ('ten_1', 'acme', :now)", {"now": NOW})
    _execute(
        url,
        "INSERT INTO datasets (id, tenant_id, name, status, num_pairs, bytes, sha256, storage_key, preview,"
        " created_at) VALUES ('ds_1', 'ten_1', 'old', 'ready', 2, 10, '', 'tenants/ten_1/datasets/ds_1',"
        " '[]', :now)",
        {"now": NOW},
    )
    rows = [
        ("job_full", "tiny-sdxl", "mapo", FULL_SPEC, FULL_SPEC["validation"], 11),
        ("job_bare", "tiny-sd", "dpo", {"max_train_steps": 5}, {"prompts": ["a cat"]}, 5),
    ]
    for job_id, base_model, method, spec, validation, seed in rows:
        _execute(
            url,
            "INSERT INTO jobs (id, tenant_id, dataset_id, base_model, method, spec, validation, webhooks,"
            " metadata, seed, status, step, total_steps, latest_metrics, attempts, last_event_seq,"
            " created_at) VALUES (:id, 'ten_1', 'ds_1', :base_model, :method, :spec, :validation, '[]',"
            " '{}', :seed, 'succeeded', 2, 2, '{}', 1, 1, :now)",
            {
                "id": job_id,
                "base_model": base_model,
                "method": method,
                "spec": json.dumps(spec),
                "validation": json.dumps(validation),
                "seed": seed,
                "now": NOW,
            },
        )
        _execute(
            url,
            "INSERT INTO job_events (job_id, seq, created_at, level, type, message, data)"
            " VALUES (:id, 1, :now, 'info', 'queued', 'job queued', '{}')",
            {"id": job_id, "now": NOW},
        )


def _specs(url: str) -> dict[str, dict[str, Any]]:
    rows = _execute(url, "SELECT id, spec FROM jobs")
    return {job_id: spec if isinstance(spec, dict) else json.loads(spec) for job_id, spec in rows}


def _job_columns(url: str) -> dict[str, dict[str, Any]]:
    engine = create_engine(url)
    columns = {c["name"]: dict(c) for c in inspect(engine).get_columns("jobs")}
    engine.dispose()
    return columns


def _history_is_kept(url: str) -> None:
    # Dropping columns must not rebuild the table: on SQLite that cascades into the jobs' events.
    assert sorted(_execute(url, "SELECT job_id FROM job_events")) == [("job_bare",), ("job_full",)]
    assert sorted(_execute(url, "SELECT id, dataset_id FROM jobs")) == [
        ("job_bare", "ds_1"),
        ("job_full", "ds_1"),
    ]


def test_upgrade_moves_the_repeated_columns_into_the_spec_and_drops_them(empty_db_url: str) -> None:
    migrations.upgrade(empty_db_url, "0006")
    _insert_at_0006(empty_db_url)
    migrations.upgrade(empty_db_url, "0007")

    assert not _job_columns(empty_db_url).keys() & REPEATED_COLUMNS
    specs = _specs(empty_db_url)
    assert specs["job_full"] == FULL_SPEC
    assert specs["job_bare"] == {
        "max_train_steps": 5,
        "base_model": "tiny-sd",
        "method": "dpo",
        "validation": {"prompts": ["a cat"]},
        "seed": 5,
    }
    _history_is_kept(empty_db_url)


def test_downgrade_restores_the_columns_from_the_spec(empty_db_url: str) -> None:
    migrations.upgrade(empty_db_url, "0006")
    _insert_at_0006(empty_db_url)
    migrations.upgrade(empty_db_url, "0007")
    command.downgrade(migrations.alembic_config(empty_db_url), "0006")

    columns = _job_columns(empty_db_url)
    assert all(not columns[name]["nullable"] for name in REPEATED_COLUMNS)
    rows = _execute(empty_db_url, "SELECT id, base_model, method, validation, seed FROM jobs ORDER BY id")
    restored = [(i, b, m, v if isinstance(v, dict) else json.loads(v), s) for i, b, m, v, s in rows]
    assert restored == [
        ("job_bare", "tiny-sd", "dpo", {"prompts": ["a cat"]}, 5),
        ("job_full", "tiny-sdxl", "mapo", FULL_SPEC["validation"], 11),
    ]
    _history_is_kept(empty_db_url)
    # And up again: the round trip loses nothing.
    migrations.upgrade(empty_db_url, "0007")
    assert _specs(empty_db_url)["job_full"] == FULL_SPEC

"""The schema only changes through migrations: on both databases, autogenerate must find nothing to add."""

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

import migrations
from core.models import Base


def test_models_and_migrations_agree(db_url: str) -> None:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []


def _execute(url: str, sql: str, params: dict[str, object] | None = None) -> list[tuple[object, ...]]:
    engine = create_engine(url)
    with engine.begin() as conn:
        result = conn.execute(text(sql), params or {})
        rows = [tuple(r) for r in result] if result.returns_rows else []
    engine.dispose()
    return rows


def _insert_dataset_and_job(url: str) -> None:
    now = "2026-01-01T00:00:00+00:00"
    _execute(url, "INSERT INTO tenants (id, name, created_at) VALUES ('ten_1', 'acme', :now)", {"now": now})
    _execute(
        url,
        "INSERT INTO datasets (id, tenant_id, name, status, num_pairs, bytes, sha256, storage_key, preview,"
        " created_at) VALUES ('ds_1', 'ten_1', 'old', 'ready', 2, 10, '', 'tenants/ten_1/datasets/ds_1',"
        " '[]', :now)",
        {"now": now},
    )
    _execute(
        url,
        "INSERT INTO jobs (id, tenant_id, dataset_id, base_model, method, spec, validation, webhooks,"
        " metadata, seed, status, step, total_steps, latest_metrics, attempts, last_event_seq, created_at)"
        " VALUES ('job_1', 'ten_1', 'ds_1', 'tiny-sd', 'mapo', '{}', '{}', '[]', '{}', 0, 'succeeded', 2, 2,"
        " '{}', 1, 0, :now)",
        {"now": now},
    )


def test_datasets_gain_a_nullable_kind_that_existing_rows_leave_null_and_downgrade_removes(
    empty_db_url: str,
) -> None:
    migrations.upgrade(empty_db_url, "0005")
    _insert_dataset_and_job(empty_db_url)
    migrations.upgrade(empty_db_url, "0006")
    # The migration cannot read the manifests in storage: the API fills the kind in at start.
    assert _execute(empty_db_url, "SELECT id, kind FROM datasets") == [("ds_1", None)]
    # Adding the column must not rebuild the table: on SQLite that would cascade into the jobs using it.
    assert _execute(empty_db_url, "SELECT dataset_id FROM jobs WHERE id = 'job_1'") == [("ds_1",)]
    _execute(empty_db_url, "UPDATE datasets SET kind = 'targets' WHERE id = 'ds_1'")

    command.downgrade(migrations.alembic_config(empty_db_url), "0005")
    engine = create_engine(empty_db_url)
    columns = {c["name"] for c in inspect(engine).get_columns("datasets")}
    engine.dispose()
    assert "kind" not in columns
    assert _execute(empty_db_url, "SELECT dataset_id FROM jobs WHERE id = 'job_1'") == [("ds_1",)]

"""`python -m client …` as a user runs it: against its own data dir, and against a real API process."""

from __future__ import annotations

import json
from pathlib import Path

from core.db import Database
from core.repositories import tenants as tenant_repo
from core.settings import DEV_PEPPER, Settings
from tests.client.conftest import ApiServer, mapo, service_env


def test_keys_create_prints_a_working_key_as_its_last_word(tmp_path: Path) -> None:
    env = service_env(tmp_path / "data")
    result = mapo("keys", "create", "--tenant", "alice", env=env)
    assert result.returncode == 0, result.stderr
    key = result.stdout.split()[-1]
    assert key.startswith("mapo_")
    database = Database(Settings(data_dir=tmp_path / "data"))
    with database.sessions() as session:
        tenant = tenant_repo.authenticate(session, key, pepper=DEV_PEPPER)
        assert tenant is not None and tenant.name == "alice"
    database.dispose()


def test_migrate_creates_the_database(tmp_path: Path) -> None:
    result = mapo("migrate", env=service_env(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "mapo.db").exists()
    assert "up to date" in result.stdout


def test_api_commands_without_a_key_say_how_to_get_one(tmp_path: Path) -> None:
    result = mapo("jobs", "list", env=service_env(tmp_path))
    assert result.returncode == 2
    assert "mapo keys create" in result.stderr


def test_upload_create_list_cancel_and_watch_a_job(api_server: ApiServer, tmp_path: Path) -> None:
    demo = tmp_path / "demo.zip"
    assert (
        mapo("demo-data", str(demo), "--pairs", "4", "--resolution", "32", env=api_server.env).returncode == 0
    )
    upload = mapo("datasets", "upload", str(demo), "--name", "warm", env=api_server.env)
    assert upload.returncode == 0, upload.stderr
    dataset_id = upload.stdout.split()[0]
    assert dataset_id in mapo("datasets", "list", env=api_server.env).stdout

    created = mapo(
        *("jobs", "create", "--dataset", dataset_id, "--base-model", "tiny-sd", "--steps", "3"),
        *("--set", "mixed_precision=no", "--set", "validation.prompts=[a fox]"),
        env=api_server.env,
    )
    assert created.returncode == 0, created.stderr
    job_id = created.stdout.split()[0]
    listed = mapo("jobs", "list", env=api_server.env).stdout
    assert job_id in listed and "queued" in listed and "0/3" in listed
    job = json.loads(mapo("jobs", "get", job_id, env=api_server.env).stdout)
    assert (job["hyperparameters"]["max_train_steps"], job["hyperparameters"]["mixed_precision"]) == (3, "no")
    assert job["validation"]["prompts"] == ["a fox"]

    assert mapo("jobs", "cancel", job_id, env=api_server.env).stdout.split() == [job_id, "cancelled"]
    watched = mapo("jobs", "watch", job_id, env=api_server.env)
    assert watched.returncode == 3, watched.stdout + watched.stderr
    assert "cancel_requested" in watched.stdout


def test_api_errors_print_code_and_param(api_server: ApiServer) -> None:
    result = mapo("jobs", "create", "--dataset", "ds_missing", "--base-model", "sd-9000", env=api_server.env)
    assert result.returncode == 1
    assert "unknown_base_model" in result.stderr and "param: base_model" in result.stderr
    missing = mapo("adapter", "job_missing", env=api_server.env)
    assert (missing.returncode, "404 not_found" in missing.stderr) == (1, True)


def test_keys_list_shows_prefixes_never_keys_and_revoke_locks_the_key_out(tmp_path: Path) -> None:
    env = service_env(tmp_path / "data")
    keys = [mapo("keys", "create", "--tenant", t, env=env).stdout.split()[-1] for t in ("alice", "bob")]

    listing = mapo("keys", "list", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)
    assert [(r["tenant"], r["prefix"], r["revoked_at"]) for r in rows] == [
        ("alice", keys[0][:12], None),
        ("bob", keys[1][:12], None),
    ]
    assert not any(key in listing.stdout for key in keys)
    only_bob = json.loads(mapo("keys", "list", "--tenant", "bob", "--json", env=env).stdout)
    assert [r["tenant"] for r in only_bob] == ["bob"]

    revoked = mapo("keys", "revoke", keys[0][:12], env=env)
    assert revoked.returncode == 0, revoked.stderr
    assert rows[0]["id"] in revoked.stdout
    assert mapo("keys", "revoke", "mapo_nosuchkey", env=env).returncode == 1

    database = Database(Settings(data_dir=tmp_path / "data"))
    with database.sessions() as session:
        assert tenant_repo.authenticate(session, keys[0], pepper=DEV_PEPPER) is None
        assert tenant_repo.authenticate(session, keys[1], pepper=DEV_PEPPER) is not None
    database.dispose()
    after = json.loads(mapo("keys", "list", "--json", env=env).stdout)
    assert after[0]["revoked_at"] is not None and after[1]["revoked_at"] is None

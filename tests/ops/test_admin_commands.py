"""`python -m ops …` (the `mapo-ops` command) as an operator runs it, on its own data dir; and the same
commands reached through `mapo`, which hands them over."""

from __future__ import annotations

import json
from pathlib import Path

from core.db import Database
from core.repositories import tenants as tenant_repo
from core.settings import DEV_PEPPER, Settings
from tests.support.commands import mapo, mapo_ops, service_env


def test_keys_create_prints_a_working_key_as_its_last_word(tmp_path: Path) -> None:
    env = service_env(tmp_path / "data")
    result = mapo_ops("keys", "create", "--tenant", "alice", env=env)
    assert result.returncode == 0, result.stderr
    key = result.stdout.split()[-1]
    assert key.startswith("mapo_")
    database = Database(Settings(data_dir=tmp_path / "data"))
    with database.sessions() as session:
        tenant = tenant_repo.authenticate(session, key, pepper=DEV_PEPPER)
        assert tenant is not None and tenant.name == "alice"
    database.dispose()


def test_keys_commands_on_a_fresh_data_dir_print_no_migration_log(tmp_path: Path) -> None:
    env = service_env(tmp_path / "data")
    created = mapo_ops("keys", "create", "--tenant", "alice", env=env)
    listed = mapo_ops("keys", "list", env=env)
    for result in (created, listed):
        assert result.returncode == 0, result.stderr
        assert "alembic" not in result.stdout + result.stderr, result.stdout + result.stderr
    assert created.stdout.count("\n") == 1, created.stdout


def test_migrate_creates_the_database(tmp_path: Path) -> None:
    result = mapo_ops("migrate", env=service_env(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "mapo.db").exists()
    assert "up to date" in result.stdout


def test_keys_list_shows_prefixes_never_keys_and_revoke_locks_the_key_out(tmp_path: Path) -> None:
    env = service_env(tmp_path / "data")
    keys = [mapo_ops("keys", "create", "--tenant", t, env=env).stdout.split()[-1] for t in ("alice", "bob")]

    listing = mapo_ops("keys", "list", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)
    assert [(r["tenant"], r["prefix"], r["revoked_at"]) for r in rows] == [
        ("alice", keys[0][:12], None),
        ("bob", keys[1][:12], None),
    ]
    assert not any(key in listing.stdout for key in keys)
    only_bob = json.loads(mapo_ops("keys", "list", "--tenant", "bob", "--json", env=env).stdout)
    assert [r["tenant"] for r in only_bob] == ["bob"]

    revoked = mapo_ops("keys", "revoke", keys[0][:12], env=env)
    assert revoked.returncode == 0, revoked.stderr
    assert rows[0]["id"] in revoked.stdout
    assert mapo_ops("keys", "revoke", "mapo_nosuchkey", env=env).returncode == 1

    database = Database(Settings(data_dir=tmp_path / "data"))
    with database.sessions() as session:
        assert tenant_repo.authenticate(session, keys[0], pepper=DEV_PEPPER) is None
        assert tenant_repo.authenticate(session, keys[1], pepper=DEV_PEPPER) is not None
    database.dispose()
    after = json.loads(mapo_ops("keys", "list", "--json", env=env).stdout)
    assert after[0]["revoked_at"] is not None and after[1]["revoked_at"] is None


def test_mapo_hands_the_operator_commands_over_even_after_its_url_option(tmp_path: Path) -> None:
    env = service_env(tmp_path / "data")
    created = mapo("--url", "http://127.0.0.1:9", "keys", "create", "--tenant", "carol", env=env)
    assert created.returncode == 0, created.stderr
    listed = json.loads(mapo("keys", "list", "--json", env=env).stdout)
    assert [row["tenant"] for row in listed] == ["carol"]
    usage = mapo("keys", "create", env=env)  # --tenant is required, and the usage names the `mapo` command
    assert usage.returncode == 2 and "usage: mapo keys create" in usage.stderr


def test_mapo_help_lists_the_operator_commands() -> None:
    shown = mapo("--help", env=service_env(Path("unused")))
    assert shown.returncode == 0
    assert all(f"mapo-ops {name}" in shown.stdout for name in ("serve", "migrate", "keys"))

"""`python -m client …` as a user runs it: against its own data dir, and against a real API process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.db import Database
from core.repositories import tenants as tenant_repo
from core.settings import DEV_PEPPER, Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def mapo(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def service_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAPO_")}
    return {**env, "MAPO_DATA_DIR": str(data_dir), "COLUMNS": "200", **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real API process (no worker) on a migrated data dir; yields the CLI's environment for it."""
    root = tmp_path_factory.mktemp("cli")
    env = service_env(root / "data", MAPO_BASE_MODELS=json.dumps({"tiny-sd": str(root / "no-model")}))
    key = mapo("keys", "create", "--tenant", "cli", env=env).stdout.split()[-1]
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory", "--port", str(port)]
    log = (root / "api.log").open("wb")
    server = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not _ready(url):
        assert server.poll() is None and time.monotonic() < deadline, (root / "api.log").read_text()
        time.sleep(0.2)
    yield {**env, "MAPO_API_URL": url, "MAPO_API_KEY": key}
    server.terminate()
    server.wait(timeout=30)
    log.close()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


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


def test_upload_create_list_cancel_and_watch_a_job(api: dict[str, str], tmp_path: Path) -> None:
    demo = tmp_path / "demo.zip"
    assert mapo("demo-data", str(demo), "--pairs", "4", "--resolution", "32", env=api).returncode == 0
    upload = mapo("datasets", "upload", str(demo), "--name", "warm", env=api)
    assert upload.returncode == 0, upload.stderr
    dataset_id = upload.stdout.split()[0]
    assert dataset_id in mapo("datasets", "list", env=api).stdout

    created = mapo(
        *("jobs", "create", "--dataset", dataset_id, "--base-model", "tiny-sd", "--steps", "3"),
        *("--set", "mixed_precision=no", "--set", "validation.prompts=[a fox]"),
        env=api,
    )
    assert created.returncode == 0, created.stderr
    job_id = created.stdout.split()[0]
    listed = mapo("jobs", "list", env=api).stdout
    assert job_id in listed and "queued" in listed and "0/3" in listed
    job = json.loads(mapo("jobs", "get", job_id, env=api).stdout)
    assert (job["hyperparameters"]["max_train_steps"], job["hyperparameters"]["mixed_precision"]) == (3, "no")
    assert job["validation"]["prompts"] == ["a fox"]

    assert mapo("jobs", "cancel", job_id, env=api).stdout.split() == [job_id, "cancelled"]
    watched = mapo("jobs", "watch", job_id, env=api)
    assert watched.returncode == 3, watched.stdout + watched.stderr
    assert "cancel_requested" in watched.stdout


def test_api_errors_print_code_and_param(api: dict[str, str]) -> None:
    result = mapo("jobs", "create", "--dataset", "ds_missing", "--base-model", "sd-9000", env=api)
    assert result.returncode == 1
    assert "unknown_base_model" in result.stderr and "param: base_model" in result.stderr
    missing = mapo("adapter", "job_missing", env=api)
    assert (missing.returncode, "404 not_found" in missing.stderr) == (1, True)

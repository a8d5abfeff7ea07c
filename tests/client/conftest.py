"""A real API process (uvicorn, no worker) on its own migrated data dir, and the `mapo` command runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ApiServer:
    url: str
    key: str
    tenant: str
    data_dir: Path
    env: dict[str, str]  # what the `mapo` command needs to use this server


def mapo(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m client ARGS` from the repository root, as a user would run `mapo ARGS`."""
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def service_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Our environment without any MAPO_ setting of the developer's, plus `data_dir` and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAPO_")}
    return {**env, "MAPO_DATA_DIR": str(data_dir), "COLUMNS": "200", **extra}


def is_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """uvicorn on a free port; its key is made with `mapo keys create` (which also migrates)."""
    root = tmp_path_factory.mktemp("api")
    env = service_env(root / "data", MAPO_BASE_MODELS=json.dumps({"tiny-sd": str(root / "no-model")}))
    key = mapo("keys", "create", "--tenant", "cli", env=env).stdout.split()[-1]
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory", "--port", str(port)]
    log = (root / "api.log").open("wb")
    server = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not is_ready(url):
        assert server.poll() is None and time.monotonic() < deadline, (root / "api.log").read_text()
        time.sleep(0.2)
    yield ApiServer(url, key, "cli", root / "data", {**env, "MAPO_API_URL": url, "MAPO_API_KEY": key})
    server.terminate()
    server.wait(timeout=30)
    log.close()

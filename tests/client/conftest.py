"""A real API process (uvicorn, no worker) on its own migrated data dir, for the client tests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.support.commands import REPO_ROOT, mapo, service_env
from tests.support.ports import free_port
from tests.support.processes import ApiServer, is_ready


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
    deadline = time.monotonic() + 300  # a ceiling: uvicorn importing the app on a loaded machine
    while not is_ready(url):
        assert server.poll() is None and time.monotonic() < deadline, (root / "api.log").read_text()
        time.sleep(0.2)
    yield ApiServer(url, key, "cli", root / "data", {**env, "MAPO_API_URL": url, "MAPO_API_KEY": key})
    server.terminate()
    server.wait(timeout=30)
    log.close()

"""A real API process for the client tests: uvicorn on a free port, its key made with `mapo keys create`."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.commands import REPO_ROOT, mapo
from tests.support.ports import free_port
from tests.support.processes import ApiServer, is_ready


@contextmanager
def served_api(root: Path, env: dict[str, str]) -> Iterator[ApiServer]:
    """uvicorn serving the app with `env` (whose data dir is root/data), until the block ends."""
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
    try:
        yield ApiServer(url, key, "cli", root / "data", {**env, "MAPO_API_URL": url, "MAPO_API_KEY": key})
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()

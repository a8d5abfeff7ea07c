"""Service processes on the test's hosts (see netns.py), and the object store they share.

`SharedStorage` is what every host is told about the object store: a SeaweedFS S3 endpoint listening on
the test network's bridge address, so hosts reach it over their links exactly as they reach PostgreSQL
and Redis, and a host whose link goes down loses the store with everything else. (A folder on the shared
filesystem would not do: every namespace would still see it after the cut, and the cut host's training
would go on writing into the checkpoints that the host taking over now owns.) Each host has a data dir of
its own, as real hosts have local disks, so a job resumed elsewhere can only come from the store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.factories import TEST_PEPPER
from tests.support.netns import Host, Network
from tests.support.servers import start_seaweedfs


@dataclass(frozen=True)
class SharedStorage:
    env: dict[str, str]  # MAPO_* settings that point a host at the store


@contextmanager
def s3_storage(network: Network, root: Path) -> Iterator[SharedStorage]:
    """A SeaweedFS server on `network.gateway` (see the module docstring), removed afterwards."""
    server = start_seaweedfs(root / "object-store", address=network.gateway)
    try:
        yield SharedStorage(
            env={
                "MAPO_STORAGE_URL": f"s3://{server.BUCKET}/scale-{network.tag}",
                "MAPO_S3_ENDPOINT_URL": server.endpoint_url,
                "MAPO_S3_ACCESS_KEY_ID": server.ACCESS_KEY,
                "MAPO_S3_SECRET_ACCESS_KEY": server.SECRET_KEY,
            }
        )
    finally:
        server.close()


@dataclass
class HostProcess:
    """A process started inside a host's namespace, in a process group of its own (with its children)."""

    name: str
    host: Host
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, chars: int = 3000) -> str:
        return f"--- {self.name} ({self.host.address})\n{self.log.read_text(errors='replace')[-chars:]}"

    def stop(self, *, timeout: float = 15) -> None:
        """SIGTERM, then SIGKILL to the whole group (pool children too) after `timeout` seconds."""
        group = self.process.pid
        with suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout)
        with suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.process.wait()


def start_on(host: Host, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> HostProcess:
    log = log_dir / f"{name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            host.command(*argv),
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return HostProcess(name, host, process, log)


def service_env(
    *, database_url: str, broker_url: str, storage: SharedStorage, base_models: dict[str, str], data_dir: Path
) -> dict[str, str]:
    """What every host is configured with; timeouts short, so a lost host is noticed in seconds."""
    return {
        "MAPO_ENVIRONMENT": "test",
        "MAPO_API_KEY_PEPPER": TEST_PEPPER,
        "MAPO_DATABASE_URL": database_url,
        "MAPO_BROKER_URL": broker_url,
        "MAPO_BASE_MODELS": json.dumps(base_models),
        "MAPO_DATA_DIR": str(data_dir),
        "MAPO_HEARTBEAT_TIMEOUT_SECONDS": "8",
        "MAPO_RECONCILE_INTERVAL_SECONDS": "1",
        "MAPO_WEBHOOK_SENDER": "false",
        **storage.env,
    }


def start_api(host: Host, env: dict[str, str], log_dir: Path, *, port: int = 8000) -> tuple[HostProcess, str]:
    argv = [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory"]
    api = start_on(host, "api", [*argv, "--host", host.address, "--port", str(port)], env, log_dir)
    url = f"http://{host.address}:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert api.process.poll() is None, api.tail()
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return api, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the API on {host.address} did not come up\n{api.tail()}")


def start_worker(host: Host, node: str, env: dict[str, str], log_dir: Path) -> HostProcess:
    argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "mapo.gpu"]
    return start_on(host, node, [*argv, "-n", node, "--loglevel=INFO"], env, log_dir)

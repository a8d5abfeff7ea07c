"""Service processes the tests start for real (a `celery worker`, an API server) and waiting on what
they do: a probe to hold, a job to finish, a job to take its first step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy.orm import Session

from core.db import Database
from core.models import Job
from core.repositories import jobs as job_repo
from core.settings import Settings
from tests.support.factories import TEST_PEPPER
from tests.support.storage_backends import storage_env


@dataclass(frozen=True)
class ApiServer:
    """A running API process (tests/client/conftest.py's `api_server`) and a tenant's key on it."""

    url: str
    key: str
    tenant: str
    data_dir: Path
    env: dict[str, str]  # what the `mapo` command needs to use this server


def is_ready(url: str) -> bool:
    """Whether the API at `url` answers /readyz with 200."""
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def running_worker(
    settings: Settings, log_path: Path, *, prefix: Sequence[str] = (), **extra_env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """A real `celery worker` process (in a session of its own, so a test can kill it and its pool child
    together) configured like `settings`, its command after `prefix` (one that execs the rest); stopped
    with SIGTERM on exit if still alive."""
    env = {
        **os.environ,
        "MAPO_ENVIRONMENT": "test",
        "MAPO_DATA_DIR": str(settings.data_dir),
        "MAPO_DATABASE_URL": settings.sqlalchemy_url,
        "MAPO_BROKER_URL": settings.broker_url,
        "MAPO_BASE_MODELS": json.dumps(settings.base_models),
        "MAPO_API_KEY_PEPPER": TEST_PEPPER,
        **storage_env(settings),
        **extra_env,
    }
    command = [
        *prefix,
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "-Q",
        "mapo.gpu",
        "--loglevel=INFO",
        "--hostname",
        f"test-{uuid.uuid4().hex[:8]}@%h",
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def wait_until(session: Session, probe: Callable[[], bool], *, timeout: float) -> None:
    """Poll `probe` (re-reading rows through `session`) until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        session.expire_all()
        if probe():
            return
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout} s")


def cancel_once_training(db: Database, job_id: str, *, timeout_s: float) -> threading.Thread:
    """A started thread that asks to cancel `job_id` as soon as it has taken a step; join it after."""

    def cancel() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with db.session_scope() as session:
                job = job_repo.get_job_any_tenant(session, job_id)
                if job is not None and job.step > 0:
                    job_repo.request_cancel(session, job_id)
                    return
            time.sleep(0.1)

    thread = threading.Thread(target=cancel)
    thread.start()
    return thread


def wait_finished(session: Session, job_id: str, timeout: float = 180) -> Job:
    """The job once it has finished (re-read through `session`); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        session.expire_all()
        job = job_repo.get_job_any_tenant(session, job_id)
        if job is not None and job.is_finished:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish within {timeout}s")

"""Worker fixtures: a real tiny model, a real dataset in storage, and jobs that point at them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from core.db import Database
from core.models import Job
from core.repositories import jobs as job_repo
from core.settings import Settings
from core.storage import Storage, build_storage
from tests.conftest import TEST_PEPPER, create_dataset, create_job, create_tenant, storage_env
from tests.support.servers import PrivateRedis
from tests.trainer.specs import FAST_TRAINING
from trainer.dataset_format import MANIFEST_FILE
from trainer.synthetic.demo_data import make_demo_dataset
from worker.context import WorkerContext

FAST_SPEC: dict[str, Any] = {
    "base_model": "tiny-sd",
    "method": "mapo",
    **FAST_TRAINING,
    "validation": {"prompts": ["a circle"], "num_inference_steps": 2},
}


@pytest.fixture
def worker_settings(settings: Settings, tiny_sd: Path) -> Settings:
    return settings.model_copy(update={"base_models": {"tiny-sd": str(tiny_sd)}})


@pytest.fixture
def ctx(worker_settings: Settings, database: Database) -> WorkerContext:
    worker_settings.ensure_dirs()
    return WorkerContext(worker_settings, database, build_storage(worker_settings), "test-host:1")


def store_demo_dataset(storage: Storage, key: str, tmp_dir: Path, **options: Any) -> None:
    """A demo pairs dataset written locally, then stored under `key` (manifest last)."""
    folder = tmp_dir / f"demo-{uuid.uuid4().hex[:8]}"
    make_demo_dataset(folder, **options)
    storage.put_tree(key, folder, last=MANIFEST_FILE)


@pytest.fixture
def make_job(session: Session, ctx: WorkerContext, tmp_path: Path) -> Callable[..., Job]:
    """A committed queued job on a real 6-pair demo dataset; spec overrides merge into FAST_SPEC."""

    def make(**spec_overrides: Any) -> Job:
        tenant = create_tenant(session)
        dataset = create_dataset(session, tenant_id=tenant.id, num_pairs=6)
        store_demo_dataset(ctx.storage, dataset.storage_key, tmp_path, num_pairs=6, resolution=32)
        spec = {**FAST_SPEC, **spec_overrides}
        job = create_job(
            session,
            tenant_id=tenant.id,
            dataset_id=dataset.id,
            spec=spec,
            total_steps=spec["max_train_steps"],
        )
        session.commit()
        return job

    return make


@contextmanager
def running_worker(settings: Settings, log_path: Path, **extra_env: str) -> Iterator[subprocess.Popen[bytes]]:
    """A real `celery worker` process (in a session of its own, so a test can kill it and its pool child
    together) configured like `settings`; stopped with SIGTERM on exit if still alive."""
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


@pytest.fixture
def redis_broker(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis of its own: the shared test Redis's queues are consumed by other people's workers."""
    server = PrivateRedis(tmp_path / "redis")
    yield server
    server.close()


def wait_until(session: Session, probe: Callable[[], bool], *, timeout: float) -> None:
    """Poll `probe` (re-reading rows through `session`) until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        session.expire_all()
        if probe():
            return
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout} s")

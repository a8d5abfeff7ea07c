"""A job whose training process dies every time ends: its losses are counted, and the one that reaches
MAPO_MAX_WORKER_LOSSES fails it with worker_lost_repeatedly and the cause seen last, instead of a requeue
and another full reload forever."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from core import lifecycle
from core.models import Job, JobStatus, utcnow
from core.queue import enqueue_train_job, make_producer
from core.repositories import events as event_repo
from core.repositories import jobs as job_repo
from core.settings import Settings
from tests.support.processes import running_worker, wait_finished
from worker.context import WorkerContext
from worker.process_deaths import describe_death, oom_kill_count
from worker.reconciler import reconcile

LONG_JOB_STEPS = 100_000  # never reached: every run of it is killed
CEILING_S = 300  # generous: each round forks a child and, for the OOM test, imports torch


def _hold_stale(session: Session, job: Job) -> None:
    """The job as a worker that died left it: running, its heartbeat ten minutes old."""
    stale = utcnow() - timedelta(minutes=10)
    held = (
        update(Job).where(Job.id == job.id).values(status="running", worker_id="gone:1", heartbeat_at=stale)
    )
    session.execute(held)
    session.commit()


def _job(session: Session, job_id: str) -> Job:
    session.expire_all()
    job = job_repo.get_job_any_tenant(session, job_id)
    assert job is not None
    return job


def test_a_job_whose_worker_is_lost_every_time_fails_at_the_limit(
    ctx: WorkerContext, make_job: Callable[..., Job], session: Session
) -> None:
    job, producer = make_job(), make_producer(ctx.settings)
    for _ in range(2):
        _hold_stale(session, job)
        assert reconcile(ctx.db, producer, heartbeat_timeout_seconds=120, max_worker_losses=3) == [job.id]
        assert _job(session, job.id).status == JobStatus.QUEUED
    _hold_stale(session, job)
    assert reconcile(ctx.db, producer, heartbeat_timeout_seconds=120, max_worker_losses=3) == [job.id]
    failed = _job(session, job.id)
    assert failed.status == JobStatus.FAILED and failed.worker_losses == 3
    assert failed.error_code == "worker_lost_repeatedly"
    assert failed.error_message is not None
    assert "3 times" in failed.error_message and "stopped heartbeating for over 120 s" in failed.error_message


def test_a_graceful_hand_back_is_not_a_loss(
    ctx: WorkerContext, make_job: Callable[..., Job], session: Session
) -> None:
    job, producer = make_job(), make_producer(ctx.settings)
    for _ in range(4):
        _hold_stale(session, job)
        with ctx.db.session_scope() as tx:
            reason = lifecycle.WORKER_SHUTTING_DOWN
            assert lifecycle.requeue(tx, job.id, reason=reason, producer=producer, worker_id="gone:1")
    again = _job(session, job.id)
    assert again.status == JobStatus.QUEUED and again.worker_losses == 0


def test_a_lost_job_being_cancelled_ends_cancelled_even_at_the_limit(
    ctx: WorkerContext, make_job: Callable[..., Job], session: Session
) -> None:
    job, producer = make_job(), make_producer(ctx.settings)
    _hold_stale(session, job)
    session.execute(update(Job).where(Job.id == job.id).values(status="cancelling", worker_losses=5))
    session.commit()
    assert reconcile(ctx.db, producer, heartbeat_timeout_seconds=120, max_worker_losses=3) == [job.id]
    assert _job(session, job.id).status == JobStatus.CANCELLED


# Real worker processes: once, on one database (the transitions are tested on both above).
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_job_whose_training_process_is_killed_every_time_fails_naming_the_signal(
    worker_settings: Settings, make_job: Callable[..., Job], session: Session, tmp_path: Path
) -> None:
    job = make_job(max_train_steps=LONG_JOB_STEPS, validation={})
    log = tmp_path / "worker.log"
    # A long heartbeat timeout: the worker's main process, not the reconciler, must take the job back.
    with running_worker(worker_settings, log, MAPO_HEARTBEAT_TIMEOUT_SECONDS="3600"):
        enqueue_train_job(make_producer(worker_settings), job.id)
        kills = _kill_every_run(session, job.id, signal.SIGKILL, log=log)
    failed = _job(session, job.id)
    assert kills == 3, "the default MAPO_MAX_WORKER_LOSSES"
    assert failed.status == JobStatus.FAILED and failed.error_code == "worker_lost_repeatedly", _tail(log)
    assert failed.error_message is not None and "killed by SIGKILL" in failed.error_message
    events = event_repo.list_events(session, job.id, after=None, limit=500).items
    requeues = [e.message for e in events if e.type == "requeued"]
    assert len(requeues) == 2 and all("killed by SIGKILL" in message for message in requeues), requeues


def _kill_every_run(session: Session, job_id: str, sig: signal.Signals, *, log: Path) -> int:
    """Kill the pool child that runs `job_id` each time one claims it, until the job ends; how many."""
    killed: set[str] = set()
    deadline = time.monotonic() + CEILING_S
    while time.monotonic() < deadline:
        job = _job(session, job_id)
        if job.is_finished:
            return len(killed)
        if job.status == JobStatus.RUNNING and job.worker_id is not None and job.worker_id not in killed:
            assert len(killed) < 10, "requeued without end"
            os.kill(int(job.worker_id.rsplit(":", 1)[1]), sig)
            killed.add(job.worker_id)
        time.sleep(0.1)
    raise AssertionError(
        f"job {job_id} did not end within {CEILING_S} s after {len(killed)} kills:\n{_tail(log)}"
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_training_process_the_oom_killer_ends_is_named_out_of_memory(
    worker_settings: Settings, make_job: Callable[..., Job], session: Session, tmp_path: Path
) -> None:
    job = make_job(max_train_steps=LONG_JOB_STEPS, validation={})
    log = tmp_path / "worker.log"
    with memory_cgroup(tmp_path.name) as group:
        enter = [sys.executable, "-c", _ENTER_CGROUP, str(group / "cgroup.procs")]
        with running_worker(
            worker_settings,
            log,
            MAPO_HEARTBEAT_TIMEOUT_SECONDS="3600",
            MAPO_MAX_WORKER_LOSSES="2",
            prefix=enter,
        ):
            _wait_ready(log)
            # Room for the idle worker and a little more; importing torch alone takes more.
            usage = int((group / "memory.usage_in_bytes").read_text())
            (group / "memory.limit_in_bytes").write_text(str(usage + 150 * 2**20))
            enqueue_train_job(make_producer(worker_settings), job.id)
            failed = wait_finished(session, job.id, timeout=CEILING_S)
    assert failed.error_code == "worker_lost_repeatedly", _tail(log)
    assert failed.error_message is not None and "out of memory" in failed.error_message, failed.error_message


# Joins the cgroup, then becomes the worker: every process it starts is in the cgroup from its start.
_ENTER_CGROUP = (
    "import os, sys; open(sys.argv[1], 'w').write(str(os.getpid())); os.execv(sys.argv[2], sys.argv[2:])"
)


@contextmanager
def memory_cgroup(name: str) -> Iterator[Path]:
    """A memory cgroup (v1) of its own under this process's; skips where none can be made."""
    groups = Path("/proc/self/cgroup").read_text() if Path("/proc/self/cgroup").exists() else ""
    memory = [line.split(":", 2)[2] for line in groups.splitlines() if line.split(":")[1] == "memory"]
    parent = Path("/sys/fs/cgroup/memory") / (memory[0].lstrip("/") if memory else "")
    if not memory or oom_kill_count() is None:
        pytest.skip("no cgroup v1 memory controller to limit a worker with")
    group = parent / f"mapo-test-{name}"
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup here: {exc}")
    try:
        yield group
    finally:
        deadline = time.monotonic() + 60
        while (group / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.2)
        group.rmdir()


def _wait_ready(log: Path) -> None:
    deadline = time.monotonic() + CEILING_S
    while "ready." not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, _tail(log)
        time.sleep(0.2)


def test_deaths_are_named_from_the_exit_and_the_oom_counter() -> None:
    lost = "Worker exited prematurely: signal 9 (SIGKILL) Job: 0."
    assert "out of memory" in describe_death(lost, oom_kills_before=2, oom_kills_after=3)
    assert describe_death(lost, oom_kills_before=2, oom_kills_after=2).endswith("killed by SIGKILL")
    assert describe_death(lost, oom_kills_before=None, oom_kills_after=None).endswith("killed by SIGKILL")
    crash = "Worker exited prematurely: signal 11 (SIGSEGV) Job: 3."
    assert describe_death(crash, oom_kills_before=0, oom_kills_after=1).endswith("killed by SIGSEGV")
    exited = "Worker exited prematurely: exitcode 70 Job: 1."
    assert describe_death(exited, oom_kills_before=0, oom_kills_after=0).endswith("exited with code 70")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]

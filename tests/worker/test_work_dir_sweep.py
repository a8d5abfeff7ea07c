"""A worker host keeps local copies of its jobs' outputs (object storage). Those of jobs that ended
without their worker cleaning up (killed, lost, taken over) are removed; never those of jobs that may
still need them."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy.orm import Session

from core.db import Database
from core.repositories import jobs as job_repo
from core.settings import Settings
from core.storage import job_key
from tests.support.factories import create_job
from tests.support.processes import running_worker
from worker.staging import sweep_work_dir


def _local_copy(work_dir: Path, tenant_id: str, job_id: str) -> Path:
    folder = work_dir / job_key(tenant_id, job_id) / "checkpoints" / "step-000010"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text("{}")
    return work_dir / job_key(tenant_id, job_id)


def test_local_copies_of_ended_and_unknown_jobs_go_and_the_rest_stay(
    database: Database, session: Session, tmp_path: Path
) -> None:
    work_dir = tmp_path / "work"
    jobs = {name: create_job(session) for name in ("succeeded", "cancelled", "running", "queued", "lost")}
    session.commit()
    with database.session_scope() as s:
        for name in ("succeeded", "cancelled", "running", "lost"):
            job_repo.claim_job(s, jobs[name].id, worker_id="w:1")
        job_repo.finish_job(s, jobs["succeeded"].id, status="succeeded")
        job_repo.finish_job(s, jobs["cancelled"].id, status="cancelled")
        job_repo.finish_job(
            s, jobs["lost"].id, status="failed", error_code="outputs_not_stored", error_message="store down"
        )
    copies = {name: _local_copy(work_dir, job.tenant_id, job.id) for name, job in jobs.items()}
    unknown = _local_copy(work_dir, jobs["queued"].tenant_id, "job_deleted_long_ago")

    removed = sweep_work_dir(database, work_dir)

    assert sorted(removed) == sorted([copies["succeeded"], copies["cancelled"], unknown])
    assert all(copies[name].exists() for name in ("running", "queued"))
    # Its adapter may exist nowhere else: an operator can still recover it.
    assert copies["lost"].exists()
    assert sweep_work_dir(database, tmp_path / "no-work-dir-yet") == []


def test_a_running_worker_sweeps_its_host_s_work_dir(
    worker_settings: Settings, database: Database, session: Session, tmp_path: Path
) -> None:
    job = create_job(session)
    session.commit()
    with database.session_scope() as s:
        job_repo.claim_job(s, job.id, worker_id="killed-host:1")
        job_repo.finish_job(s, job.id, status="succeeded")
    copy = _local_copy(worker_settings.work_dir, job.tenant_id, job.id)
    with running_worker(worker_settings, tmp_path / "worker.log"):
        deadline = time.monotonic() + 90
        while copy.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    assert not copy.exists(), (tmp_path / "worker.log").read_text(errors="replace")[-3000:]

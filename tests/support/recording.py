"""Writes a job's progress into a running API's database the way the worker's recorder does (events
through `worker.translate`), so client tests can follow a job without training one."""

from __future__ import annotations

import io
from pathlib import Path

from core.db import Database
from core.repositories import events as event_repo
from core.repositories import jobs as job_repo
from core.repositories import metrics as metric_repo
from core.repositories import outputs as output_repo
from core.repositories import tenants as tenant_repo
from core.settings import Settings
from core.storage import LocalStorage, job_key
from tests.support.factories import create_job
from trainer.events import Event, Step
from worker.translate import translate


class JobWriter:
    """A running job of `tenant_name` with `total_steps`; `steps()` records the next optimizer steps."""

    def __init__(self, data_dir: Path, tenant_name: str, *, total_steps: int = 10) -> None:
        settings = Settings(data_dir=data_dir)
        self.database = Database(settings)
        self.storage = LocalStorage(settings.storage_root)
        with self.database.session_scope() as session:
            tenant = tenant_repo.get_tenant_by_name(session, tenant_name)
            assert tenant is not None
            job = create_job(session, tenant_id=tenant.id, status="running", total_steps=total_steps)
            self.tenant_id, self.job_id = tenant.id, job.id
        self.total_steps, self.step = total_steps, 0

    def steps(self, count: int, *, eta_seconds: float | None = None) -> None:
        """Record `count` step events; the loss of step n is 1/n."""
        events: list[Event] = []
        for _ in range(count):
            self.step += 1
            events.append(Step(self.step, self.total_steps, {"loss": 1.0 / self.step, "lr": 1e-4}))
        writes = translate(events, self.storage.key_of)
        with self.database.session_scope() as session:
            event_repo.append_events(session, self.job_id, writes.events)
            metric_repo.add_metrics(session, self.job_id, writes.metrics)
            job_repo.update_progress(
                session,
                self.job_id,
                step=self.step,
                total_steps=self.total_steps,
                eta_seconds=eta_seconds,
                latest_metrics=writes.last_step.metrics if writes.last_step else None,
            )

    def sample(self, *, step: int, index: int, prompt: str, with_lora: bool, png: bytes) -> None:
        """Store a validation image and its row."""
        name = f"{index}-{'lora' if with_lora else 'base'}.png"
        key = f"{job_key(self.tenant_id, self.job_id)}/samples/step-{step}/{name}"
        self.storage.write_stream(key, io.BytesIO(png))
        with self.database.session_scope() as session:
            output_repo.add_sample(
                session,
                self.job_id,
                step=step,
                index=index,
                prompt=prompt,
                with_lora=with_lora,
                storage_key=key,
            )

    def finish(self, status: str = "succeeded") -> None:
        """End the job as the worker's runner does: the status, then its event."""
        with self.database.session_scope() as session:
            job_repo.finish_job(session, self.job_id, status=status)
            event_repo.append_event(session, self.job_id, status, f"job {status}")

    def close(self) -> None:
        self.database.dispose()

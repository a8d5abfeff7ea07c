"""Jobs: create (validated, idempotent, enqueued after commit), read, list and cancel."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.deps import AppContext
from api.errors import Conflict, InvalidRequest, NotFound
from api.schemas import (
    HYPERPARAMETER_FIELDS,
    TOP_LEVEL_SPEC_FIELDS,
    JobCreate,
    JobError,
    JobOut,
    ListResponse,
    Progress,
)
from api.services.base_models import check_fields_apply
from api.services.datasets import require_dataset
from api.services.estimates import check_fits
from core import lifecycle
from core.db import after_commit
from core.job_errors import error_code
from core.models import Job, JobStatus, Tenant
from core.repositories import jobs as job_repo
from core.repositories import webhooks as webhook_repo
from core.storage import job_key


def create_job(
    session: Session, context: AppContext, tenant: Tenant, body: JobCreate, *, idempotency_key: str | None
) -> JobOut:
    """Create a queued job and enqueue it once the transaction commits; an Idempotency-Key seen before
    returns that job (or 409 if the body differs)."""
    if body.base_model not in context.settings.base_models:
        allowed = ", ".join(sorted(context.settings.base_models)) or "none configured"
        message = f"unknown base_model {body.base_model!r} (allowed: {allowed})"
        raise InvalidRequest(message, param="base_model", code="unknown_base_model")
    check_fields_apply(context, body)
    queue = _require_queue(context, body.queue)
    request_hash = hashlib.sha256(
        json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()
    ).hexdigest()
    if idempotency_key is not None:
        existing = job_repo.get_job_by_idempotency_key(session, tenant_id=tenant.id, key=idempotency_key)
        if existing is not None:
            return _replayed(existing, request_hash)
    require_dataset(session, tenant, body.dataset_id)  # 404 for a missing or another tenant's dataset
    check_fits(session, context, body, queue=queue)
    job = _new_job(tenant, body, queue=queue, idempotency_key=idempotency_key, request_hash=request_hash)
    try:
        lifecycle.queue(session, job, producer=context.producer)
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won the insert.
        winner = job_repo.get_job_by_idempotency_key(session, tenant_id=tenant.id, key=idempotency_key or "")
        if winner is None:
            raise
        return _replayed(winner, request_hash)
    if body.webhooks:
        # Created now, so the secret can be fetched before the first delivery is signed with it.
        webhook_repo.ensure_secret(session, tenant.id)
    return job_out(job)


def _require_queue(context: AppContext, queue: str | None) -> str:
    """The job's queue: the one asked for if the server has it (422 naming `queue` if not), else the
    default."""
    if queue is None:
        return context.settings.default_queue
    if queue not in context.settings.queues:
        message = f"unknown queue {queue!r} (allowed: {', '.join(context.settings.queues)})"
        raise InvalidRequest(message, param="queue", code="unknown_queue")
    return queue


def _new_job(
    tenant: Tenant, body: JobCreate, *, queue: str, idempotency_key: str | None, request_hash: str
) -> Job:
    spec = body.to_spec()
    return Job(
        tenant_id=tenant.id,
        dataset_id=body.dataset_id,
        spec=spec.model_dump(mode="json"),
        webhooks=[hook.model_dump(mode="json") for hook in body.webhooks],
        metadata_=body.metadata,
        queue=queue,
        priority=body.priority,
        total_steps=spec.max_train_steps,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
    )


def _replayed(job: Job, request_hash: str) -> JobOut:
    if job.request_hash != request_hash:
        raise Conflict(
            "Idempotency-Key was already used with a different request body",
            param="Idempotency-Key",
            code="idempotency_key_reused",
        )
    return job_out(job)


def job_out(job: Job) -> JobOut:
    error = None
    if job.error_code:
        error = JobError(code=error_code(job.error_code), message=job.error_message or "")
    return JobOut.model_validate(
        {
            "id": job.id,
            "status": job.status,
            "dataset_id": job.dataset_id,
            **_request_of(job),
            "webhooks": job.webhooks or [],
            "metadata": job.metadata_,
            "queue": job.queue,
            "priority": job.priority,
            "progress": Progress(step=job.step, total_steps=job.total_steps, eta_seconds=job.eta_seconds),
            "error": error,
            "latest_metrics": job.latest_metrics,
            "attempts": job.attempts,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
        }
    )


def _request_of(job: Job) -> dict[str, Any]:
    """The job's training fields as the job body has them, read from its stored spec (their only copy):
    the top-level ones and the rest as `hyperparameters`, split by the schema's own field sets."""
    top_level = {name: job.spec[name] for name in TOP_LEVEL_SPEC_FIELDS}
    hyperparameters = {k: v for k, v in job.spec.items() if k in HYPERPARAMETER_FIELDS}
    return {**top_level, "hyperparameters": hyperparameters}


def require_job(session: Session, tenant: Tenant, job_id: str) -> Job:
    """The tenant's job or 404 (also for another tenant's)."""
    job = job_repo.get_job(session, job_id, tenant_id=tenant.id)
    if job is None:
        raise NotFound(f"job {job_id} not found", param="job_id")
    return job


def get_job(session: Session, tenant: Tenant, job_id: str) -> JobOut:
    return job_out(require_job(session, tenant, job_id))


def list_jobs(
    session: Session, tenant: Tenant, *, status: JobStatus | None, limit: int, after: str | None
) -> ListResponse[JobOut]:
    page = job_repo.list_jobs(session, tenant_id=tenant.id, status=status, limit=limit, after=after)
    return ListResponse[JobOut](data=[job_out(j) for j in page.items], has_more=page.has_more)


def cancel_job(session: Session, context: AppContext, tenant: Tenant, job_id: str) -> JobOut:
    """queued → cancelled, running → cancelling; repeating is harmless; 409 once the job has finished."""
    job = require_job(session, tenant, job_id)
    after = lifecycle.request_cancel(session, job.id, producer=context.producer)
    if after in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise Conflict(f"job {job_id} has already {after}", param="job_id", code="job_finished")
    return job_out(require_job(session, tenant, job_id))


def delete_job(session: Session, context: AppContext, tenant: Tenant, job_id: str) -> None:
    """Delete a finished job: its row now (the database cascades to its events, metrics, outputs and
    webhook deliveries) and its stored files once that commits; 409 while it has not finished, since a
    worker may still write to it. A finished job never changes again, so the check cannot go stale."""
    job = require_job(session, tenant, job_id)
    if not job.is_finished:
        message = f"job {job_id} is {job.status}; cancel it and delete it once it has finished"
        raise Conflict(message, param="job_id", code="job_not_finished")
    key = job_key(job.tenant_id, job.id)
    session.delete(job)
    session.flush()
    after_commit(session, lambda: context.storage.delete_tree(key))

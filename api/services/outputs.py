"""What a job produced: metric series, checkpoints, validation samples and the adapter file."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.deps import AppContext
from api.errors import NotFound
from api.schemas import CheckpointOut, ListResponse, MetricSeries, MetricsOut, SampleOut
from api.services.downloads import IMAGE_MEDIA_TYPES, FileDownload, stored_download
from api.services.jobs import require_job
from core.models import Tenant
from core.repositories import metrics as metric_repo
from core.repositories import outputs as output_repo

ADAPTER_FILE_NAMES = {"diffusers": "pytorch_lora_weights.safetensors", "kohya": "{job_id}_kohya.safetensors"}


def get_metrics(session: Session, tenant: Tenant, job_id: str, *, max_points: int | None) -> MetricsOut:
    """Every point of each series, or at most `max_points` of each (see `metric_series`)."""
    require_job(session, tenant, job_id)
    series = metric_repo.metric_series(session, job_id, max_points=max_points)
    return MetricsOut(
        series={
            name: MetricSeries(steps=[s for s, _ in points], values=[v for _, v in points])
            for name, points in series.items()
        }
    )


def list_checkpoints(session: Session, tenant: Tenant, job_id: str) -> ListResponse[CheckpointOut]:
    require_job(session, tenant, job_id)
    rows = output_repo.list_checkpoints(session, job_id)
    data = [CheckpointOut(step=c.step, metrics=c.metrics, created_at=c.created_at) for c in rows]
    return ListResponse[CheckpointOut](data=data, has_more=False)


def list_samples(session: Session, tenant: Tenant, job_id: str) -> ListResponse[SampleOut]:
    require_job(session, tenant, job_id)
    data = [
        SampleOut(
            id=s.id,
            step=s.step,
            index=s.index,
            prompt=s.prompt,
            with_lora=s.with_lora,
            url=f"/v1/jobs/{job_id}/samples/{s.id}/image",
            created_at=s.created_at,
        )
        for s in output_repo.list_samples(session, job_id)
    ]
    return ListResponse[SampleOut](data=data, has_more=False)


def sample_image(
    session: Session, context: AppContext, tenant: Tenant, job_id: str, sample_id: int
) -> FileDownload:
    require_job(session, tenant, job_id)
    sample = output_repo.get_sample(session, job_id, sample_id)
    missing = NotFound(f"sample {sample_id} of job {job_id} not found", param="sample_id")
    if sample is None:
        raise missing
    suffix = "." + sample.storage_key.rsplit(".", 1)[-1].lower()
    name = sample.storage_key.rsplit("/", 1)[-1]
    media_type = IMAGE_MEDIA_TYPES.get(suffix, "image/png")
    try:
        return stored_download(context.storage, sample.storage_key, media_type=media_type, filename=name)
    except FileNotFoundError:
        raise missing from None


def adapter(
    session: Session, context: AppContext, tenant: Tenant, job_id: str, *, format: str
) -> FileDownload:
    """The trained LoRA in `format`; 404 until the job has produced it."""
    job = require_job(session, tenant, job_id)
    artifact = output_repo.get_artifact(session, job_id, format=format)
    missing = NotFound(
        f"job {job_id} has no {format} adapter (status {job.status})",
        param="format",
        code="adapter_not_found",
    )
    if artifact is None:
        raise missing
    filename = ADAPTER_FILE_NAMES[format].format(job_id=job_id)
    try:
        return stored_download(
            context.storage,
            artifact.storage_key,
            media_type="application/octet-stream",
            filename=filename,
            sha256=artifact.sha256,
        )
    except FileNotFoundError:
        raise missing from None

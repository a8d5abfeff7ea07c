"""Checkpoints, validation samples and adapter artifacts of a job (upserted on their natural keys)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Artifact, Checkpoint, Sample, utcnow
from core.repositories.upsert import upsert_rows


def add_checkpoint(
    session: Session, job_id: str, *, step: int, storage_key: str, metrics: dict[str, float]
) -> None:
    row = {
        "job_id": job_id,
        "step": step,
        "storage_key": storage_key,
        "metrics": metrics,
        "created_at": utcnow(),
    }
    upsert_rows(session, Checkpoint, [row], conflict=("job_id", "step"), update=("storage_key", "metrics"))


def delete_checkpoint(session: Session, job_id: str, *, step: int) -> None:
    """Forget a checkpoint the trainer pruned from disk (it keeps only the newest few)."""
    checkpoint = session.scalar(
        select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step == step)
    )
    if checkpoint is not None:
        session.delete(checkpoint)


def add_sample(
    session: Session, job_id: str, *, step: int, index: int, prompt: str, with_lora: bool, storage_key: str
) -> None:
    row = {
        "job_id": job_id,
        "step": step,
        "index": index,
        "prompt": prompt,
        "with_lora": with_lora,
        "storage_key": storage_key,
        "created_at": utcnow(),
    }
    upsert_rows(
        session,
        Sample,
        [row],
        conflict=("job_id", "step", "index", "with_lora"),
        update=("prompt", "storage_key"),
    )


def add_artifact(
    session: Session, job_id: str, *, format: str, storage_key: str, size_bytes: int, sha256: str
) -> None:
    row = {
        "job_id": job_id,
        "format": format,
        "storage_key": storage_key,
        "bytes": size_bytes,
        "sha256": sha256,
        "created_at": utcnow(),
    }
    upsert_rows(
        session, Artifact, [row], conflict=("job_id", "format"), update=("storage_key", "bytes", "sha256")
    )


def list_checkpoints(session: Session, job_id: str) -> list[Checkpoint]:
    """Steps ascending."""
    return list(
        session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step))
    )


def list_samples(session: Session, job_id: str) -> list[Sample]:
    """By step, then prompt index, base-model image before the LoRA one."""
    stmt = select(Sample).where(Sample.job_id == job_id)
    return list(session.scalars(stmt.order_by(Sample.step, Sample.index, Sample.with_lora)))


def get_sample(session: Session, job_id: str, sample_id: int) -> Sample | None:
    return session.scalar(select(Sample).where(Sample.job_id == job_id, Sample.id == sample_id))


def get_artifact(session: Session, job_id: str, *, format: str) -> Artifact | None:
    return session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.format == format))


def list_artifacts(session: Session, job_id: str) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.format)))

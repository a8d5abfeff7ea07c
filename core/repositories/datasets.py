"""Datasets of a tenant."""

from __future__ import annotations

from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from core.models import ACTIVE_STATUSES, Dataset, Job
from core.repositories.pagination import Page, paginate
from trainer.dataset_format import DatasetKind


def add_dataset(
    session: Session,
    *,
    dataset_id: str,
    tenant_id: str,
    name: str,
    kind: DatasetKind,
    storage_key: str,
    num_pairs: int,
    size_bytes: int,
    sha256: str,
    preview: list[dict[str, Any]],
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    captions_missing: int | None = None,
) -> Dataset:
    """Record a dataset whose files are already complete in storage (status `ready`); raises
    IntegrityError if the tenant already used `idempotency_key`."""
    dataset = Dataset(
        id=dataset_id,
        tenant_id=tenant_id,
        name=name,
        status="ready",
        kind=kind,
        storage_key=storage_key,
        num_pairs=num_pairs,
        bytes=size_bytes,
        sha256=sha256,
        preview=preview,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        captions_missing=captions_missing,
    )
    session.add(dataset)
    session.flush()
    return dataset


def get_dataset_by_idempotency_key(session: Session, *, tenant_id: str, key: str) -> Dataset | None:
    return session.scalar(
        select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.idempotency_key == key)
    )


def get_dataset(session: Session, dataset_id: str, *, tenant_id: str) -> Dataset | None:
    """The tenant's dataset, or None (another tenant's dataset is None too)."""
    return session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.tenant_id == tenant_id))


def list_datasets(session: Session, *, tenant_id: str, limit: int, after: str | None) -> Page[Dataset]:
    """Newest first."""
    stmt = select(Dataset).where(Dataset.tenant_id == tenant_id)
    return paginate(session, stmt, key=Dataset.id, after=after, limit=limit, newest_first=True)


def datasets_without_kind(session: Session, *, after: str | None, limit: int) -> list[tuple[str, str]]:
    """(id, storage_key) of up to `limit` datasets with no kind recorded, by id after `after`, of every
    tenant (the API's start-up fills their kinds in from their manifests)."""
    stmt = select(Dataset.id, Dataset.storage_key).where(Dataset.kind.is_(None))
    if after is not None:
        stmt = stmt.where(Dataset.id > after)
    return [(row.id, row.storage_key) for row in session.execute(stmt.order_by(Dataset.id).limit(limit))]


def record_kind(session: Session, dataset_id: str, kind: DatasetKind) -> None:
    """Set the kind of a dataset that has none (a concurrent start may have set it already; a dataset
    deleted meanwhile is left alone)."""
    stmt = update(Dataset).where(Dataset.id == dataset_id, Dataset.kind.is_(None)).values(kind=kind)
    session.execute(stmt)


def dataset_in_use(session: Session, dataset_id: str) -> bool:
    """True while a job that has not finished refers to the dataset."""
    stmt = select(exists().where(Job.dataset_id == dataset_id, Job.status.in_(ACTIVE_STATUSES)))
    return bool(session.scalar(stmt))


def delete_dataset(session: Session, dataset: Dataset) -> None:
    """Delete the row; finished jobs keep their history with `dataset_id` set to NULL."""
    session.delete(dataset)
    session.flush()

"""An uploaded preference dataset, stored in the trainer's canonical layout under `storage_key`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import Base, UTCDateTime, new_id, utcnow
from trainer.dataset_format import DatasetKind

# A dataset is recorded only once its files are complete in storage, so it has one status. The column stays
# (rows written by older releases hold it too); dropping it is not worth a migration.
DatasetStatus = Literal["ready"]


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (
        Index("ix_datasets_tenant_id_id", "tenant_id", "id"),
        Index("uq_datasets_tenant_id_idempotency_key", "tenant_id", "idempotency_key", unique=True),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ds"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[DatasetStatus] = mapped_column(String(20), default="ready")
    # As its manifest records it, so that reads and listings never open the manifest. NULL only for a
    # dataset recorded before migration 0006 whose manifest the API could not read when it started
    # (api/services/dataset_kinds.py).
    kind: Mapped[DatasetKind | None] = mapped_column(String(20), default=None)
    num_pairs: Mapped[int] = mapped_column(default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    storage_key: Mapped[str] = mapped_column(String(300))
    preview: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # Rows of a captioned-images upload whose image had no caption; NULL for every other upload.
    captions_missing: Mapped[int | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # An upload repeated with the same Idempotency-Key returns this dataset if `request_hash` (of the file,
    # name and kind) matches, and is refused otherwise.
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)

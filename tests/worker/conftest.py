"""Worker fixtures beyond the shared ones of tests/conftest.py (the worker's context and `make_job`):
targets and avoid datasets whose files came through the real upload ingest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from api.services.ingest import ingest_upload
from core.models import Dataset
from tests.support.factories import create_dataset, create_tenant
from tests.support.targets import NUM_TARGETS, targets_upload
from trainer.dataset_format import DatasetKind
from worker.context import WorkerContext


@pytest.fixture
def one_sided_dataset(
    session: Session, ctx: WorkerContext, tmp_path: Path
) -> Callable[[DatasetKind], Dataset]:
    """A committed dataset row whose files came through the real upload ingest."""

    def make(kind: DatasetKind) -> Dataset:
        dataset = create_dataset(session, tenant_id=create_tenant(session).id, num_pairs=NUM_TARGETS)
        upload = targets_upload(tmp_path / f"{dataset.id}.zip", kind)
        ingest_upload(upload, upload.name, ctx.storage.local_path(dataset.storage_key), kind=kind)
        session.commit()
        return dataset

    return make

"""Rows the tests arrange: tenants and their API keys (and the Bearer headers of one), datasets, jobs,
a worker's advertisement, and a demo dataset's files in storage."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from core.models import ApiKey, Dataset, Job, Tenant
from core.repositories import tenants as tenant_repo
from core.storage import Storage, dataset_key

# The pepper of every test's settings (and of the workers and servers the tests start).
TEST_PEPPER = "test-pepper"


def create_tenant(session: Session, **overrides: Any) -> Tenant:
    return tenant_repo.create_tenant(session, overrides.pop("name", f"tenant-{uuid.uuid4().hex[:8]}"))


def create_api_key(session: Session, tenant: Tenant, *, pepper: str = TEST_PEPPER) -> tuple[ApiKey, str]:
    return tenant_repo.create_api_key(session, tenant_id=tenant.id, pepper=pepper)


def auth_headers(session: Session, tenant: Tenant | None = None) -> dict[str, str]:
    """Bearer headers of a new key (for a new tenant unless one is given); commits."""
    tenant = tenant or create_tenant(session)
    _, clear = create_api_key(session, tenant)
    session.commit()
    return {"Authorization": f"Bearer {clear}"}


def create_dataset(session: Session, **overrides: Any) -> Dataset:
    """A ready dataset row (files are the test's business)."""
    tenant_id = overrides.pop("tenant_id", None) or create_tenant(session).id
    dataset_id = overrides.pop("id", None) or f"ds_{uuid.uuid4().hex[:24]}"
    values: dict[str, Any] = {
        "name": "pairs",
        "status": "ready",
        "num_pairs": 2,
        "bytes": 10,
        "sha256": "0" * 64,
        "storage_key": dataset_key(tenant_id, dataset_id),
        "preview": [{"prompt": "a cat"}],
    }
    dataset = Dataset(id=dataset_id, tenant_id=tenant_id, **{**values, **overrides})
    session.add(dataset)
    session.flush()
    return dataset


def create_job(session: Session, **overrides: Any) -> Job:
    """A queued job on a new dataset of its tenant unless told otherwise."""
    tenant_id = overrides.pop("tenant_id", None) or create_tenant(session).id
    if "dataset_id" not in overrides:
        overrides["dataset_id"] = create_dataset(session, tenant_id=tenant_id).id
    # The spec fields the job's JSON shows at the top level: every spec the API stores has them. They may
    # be given as keywords, as the job body has them, or in `spec`.
    request = {"base_model": "tiny-sd", "method": "mapo", "validation": {}, "seed": 0}
    given = {name: overrides.pop(name) for name in request.keys() & overrides.keys()}
    overrides["spec"] = {**request, **overrides.get("spec", {"max_train_steps": 10}), **given}
    # A queued job's total is its spec's step count, as the API records it.
    total_steps = overrides["spec"].get("max_train_steps", 10)
    values: dict[str, Any] = {"metadata_": {}, "status": "queued", "total_steps": total_steps}
    job = Job(tenant_id=tenant_id, **{**values, **overrides})
    session.add(job)
    session.flush()
    return job


def store_demo_dataset(storage: Storage, key: str, tmp_dir: Path, **options: Any) -> None:
    """A demo pairs dataset written locally, then stored under `key` (manifest last)."""
    from trainer.dataset_format import MANIFEST_FILE
    from trainer.synthetic.demo_data import (
        make_demo_dataset,  # draws with PIL: loaded by the tests that use it
    )

    folder = tmp_dir / f"demo-{uuid.uuid4().hex[:8]}"
    make_demo_dataset(folder, **options)
    storage.put_tree(key, folder, last=MANIFEST_FILE)


def advertisement(worker_id: str, **overrides: object) -> dict[str, object]:
    """What a worker registers itself with (an 8×H100 host on the mapo.gpu.h100 queue unless told)."""
    values: dict[str, object] = {
        "id": worker_id,
        "hostname": "h1",
        "queues": ["mapo.gpu.h100"],
        "device": "cuda",
        "gpu_model": "NVIDIA H100 80GB HBM3",
        "gpu_memory_mb": 81559,
        "gpu_count": 8,
        "version": "0.1.0",
    }
    return {**values, **overrides}

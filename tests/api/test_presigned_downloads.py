"""With object storage and MAPO_STORAGE_PRESIGN_DOWNLOADS, file routes answer 307 to the object store."""

import hashlib
import io

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.main import create_app
from core.db import Database
from core.repositories import outputs as output_repo
from core.settings import Settings
from core.storage import Storage, job_key
from tests.conftest import auth_headers, create_job, create_tenant

pytestmark = pytest.mark.parametrize(
    "storage_backend", [pytest.param("s3", marks=pytest.mark.s3)], indirect=True
)


def test_adapter_download_redirects_to_a_presigned_url_that_serves_it(
    settings: Settings, database: Database, session: Session, storage: Storage
) -> None:
    tenant = create_tenant(session)
    job = create_job(session, tenant_id=tenant.id)
    payload = b"lora" * 1000
    key = storage.write_stream(f"{job_key(tenant.id, job.id)}/adapter.safetensors", io.BytesIO(payload)).key
    digest = hashlib.sha256(payload).hexdigest()
    output_repo.add_artifact(
        session, job.id, format="diffusers", storage_key=key, size_bytes=len(payload), sha256=digest
    )
    headers = auth_headers(session, tenant)
    presigning = settings.model_copy(update={"storage_presign_downloads": True})
    with TestClient(create_app(presigning), follow_redirects=False) as client:
        response = client.get(f"/v1/jobs/{job.id}/adapter", headers=headers)
    assert response.status_code == 307
    fetched = httpx.get(response.headers["location"])
    assert fetched.status_code == 200 and fetched.content == payload
    assert "pytorch_lora_weights.safetensors" in fetched.headers["content-disposition"]

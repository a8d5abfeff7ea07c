"""With object storage and MAPO_STORAGE_PRESIGN_DOWNLOADS, file routes answer 307 to the object store."""

import hashlib
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.main import create_app
from client.sdk import ChecksumMismatch, MapoClient
from core.db import Database
from core.models import Dataset, Job, Tenant
from core.repositories import outputs as output_repo
from core.settings import Settings
from core.storage import Storage, job_key
from tests.support.archives import pairs_zip
from tests.support.factories import auth_headers, create_job, create_tenant
from tests.support.ports import free_port

pytestmark = pytest.mark.parametrize(
    "storage_backend", [pytest.param("s3", marks=pytest.mark.s3)], indirect=True
)


def job_with_adapter(session: Session, storage: Storage, payload: bytes) -> tuple[Tenant, Job, str]:
    """A job of a new tenant whose stored diffusers adapter is `payload`; returns its storage key too."""
    tenant = create_tenant(session)
    job = create_job(session, tenant_id=tenant.id)
    key = storage.write_stream(f"{job_key(tenant.id, job.id)}/adapter.safetensors", io.BytesIO(payload)).key
    digest = hashlib.sha256(payload).hexdigest()
    output_repo.add_artifact(
        session, job.id, format="diffusers", storage_key=key, size_bytes=len(payload), sha256=digest
    )
    return tenant, job, key


def test_adapter_download_redirects_to_a_presigned_url_that_serves_it(
    settings: Settings, database: Database, session: Session, storage: Storage
) -> None:
    payload = b"lora" * 1000
    tenant, job, _ = job_with_adapter(session, storage, payload)
    headers = auth_headers(session, tenant)
    presigning = settings.model_copy(update={"storage_presign_downloads": True})
    with TestClient(create_app(presigning), follow_redirects=False) as client:
        response = client.get(f"/v1/jobs/{job.id}/adapter", headers=headers)
    assert response.status_code == 307
    fetched = httpx.get(response.headers["location"])
    assert fetched.status_code == 200 and fetched.content == payload
    assert "pytorch_lora_weights.safetensors" in fetched.headers["content-disposition"]


@pytest.fixture
def served_presigning_api(settings: Settings, database: Database) -> Iterator[str]:
    """Our app on a real loopback port (the SDK must follow the redirect out to the object store, which a
    TestClient, answering every URL itself, cannot do)."""
    presigning = settings.model_copy(update={"storage_presign_downloads": True})
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(presigning), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def test_the_sdk_follows_the_redirect_and_checks_the_adapter_it_saves(
    served_presigning_api: str, session: Session, storage: Storage, tmp_path: Path
) -> None:
    payload = b"lora" * 100_000
    tenant, job, key = job_with_adapter(session, storage, payload)
    api_key = auth_headers(session, tenant)["Authorization"].removeprefix("Bearer ")
    session.commit()
    with MapoClient(served_presigning_api, api_key) as mapo:
        saved = mapo.download_adapter(job.id, f"{tmp_path}/out/")
        assert saved.name == "pytorch_lora_weights.safetensors" and saved.read_bytes() == payload

        tampered = payload[:-1] + b"X"
        storage.write_stream(key, io.BytesIO(tampered))
        with pytest.raises(ChecksumMismatch):
            mapo.download_adapter(job.id, f"{tmp_path}/again/")
    assert not list((tmp_path / "again").iterdir()), "nothing kept of a file that fails its checksum"


def test_a_lost_dataset_image_is_404_not_a_redirect_to_nothing(
    settings: Settings, database: Database, session: Session, storage: Storage
) -> None:
    headers = auth_headers(session)
    presigning = settings.model_copy(update={"storage_presign_downloads": True})
    with TestClient(create_app(presigning), follow_redirects=False) as client:
        response = client.post("/v1/datasets", files={"file": ("pairs.zip", pairs_zip())}, headers=headers)
        dataset = response.json()
        chosen = client.get(dataset["preview"][0]["chosen_url"], headers=headers)
        assert chosen.status_code == 307 and httpx.get(chosen.headers["location"]).status_code == 200

        images = [k for k in storage.list_keys(dataset_key(session, dataset["id"])) if "/images/" in k]
        for key in images:
            storage.delete_tree(key)
        lost = client.get(dataset["preview"][0]["chosen_url"], headers=headers)
    assert (lost.status_code, lost.json()["error"]["param"]) == (404, "n")


def dataset_key(session: Session, dataset_id: str) -> str:
    dataset = session.get(Dataset, dataset_id)
    assert dataset is not None
    return dataset.storage_key

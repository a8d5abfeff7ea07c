import hashlib
import io

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from core.models import Tenant
from core.repositories import metrics as metric_repo
from core.repositories import outputs as output_repo
from core.repositories.metrics import MetricPoint
from core.storage import Storage, job_key
from tests.support.factories import auth_headers, create_job, create_tenant
from tests.support.storage_backends import BOTH_STORAGE_BACKENDS

pytestmark = BOTH_STORAGE_BACKENDS


@pytest.fixture
def tenant(session: Session) -> Tenant:
    tenant = create_tenant(session)
    session.commit()
    return tenant


@pytest.fixture
def headers(session: Session, tenant: Tenant) -> dict[str, str]:
    return auth_headers(session, tenant)


def store(storage: Storage, key: str, payload: bytes) -> str:
    return storage.write_stream(key, io.BytesIO(payload)).key


def test_adapter_streams_with_its_sha256_in_both_formats(
    client: TestClient, session: Session, storage: Storage, tenant: Tenant, headers: dict[str, str]
) -> None:
    job = create_job(session, tenant_id=tenant.id)
    for fmt, payload in (("diffusers", b"d" * 3_000_000), ("kohya", b"k" * 10)):
        key = store(storage, f"{job_key(tenant.id, job.id)}/{fmt}.safetensors", payload)
        digest = hashlib.sha256(payload).hexdigest()
        output_repo.add_artifact(
            session, job.id, format=fmt, storage_key=key, size_bytes=len(payload), sha256=digest
        )
    session.commit()

    response = client.get(f"/v1/jobs/{job.id}/adapter", headers=headers)
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == response.headers["x-checksum-sha256"]
    assert response.headers["etag"] == f'"{response.headers["x-checksum-sha256"]}"'
    assert "pytorch_lora_weights.safetensors" in response.headers["content-disposition"]
    assert client.get(f"/v1/jobs/{job.id}/adapter?format=kohya", headers=headers).content == b"k" * 10
    bad = client.get(f"/v1/jobs/{job.id}/adapter?format=ckpt", headers=headers)
    assert (bad.status_code, bad.json()["error"]["param"]) == (422, "format")


def test_adapter_of_an_unfinished_job_is_404(
    client: TestClient, session: Session, tenant: Tenant, headers: dict[str, str]
) -> None:
    job = create_job(session, tenant_id=tenant.id)
    session.commit()
    response = client.get(f"/v1/jobs/{job.id}/adapter", headers=headers)
    assert (response.status_code, response.json()["error"]["code"]) == (404, "adapter_not_found")


def test_metrics_checkpoints_and_samples_are_listed(
    client: TestClient, session: Session, storage: Storage, tenant: Tenant, headers: dict[str, str]
) -> None:
    job = create_job(session, tenant_id=tenant.id)
    metric_repo.add_metrics(session, job.id, [MetricPoint(s, "loss", 1.0 / s) for s in (1, 2, 3)])
    output_repo.add_checkpoint(session, job.id, step=2, storage_key="x/checkpoint-2", metrics={"loss": 0.5})
    key = store(storage, f"{job_key(tenant.id, job.id)}/samples/step-2/0-lora.png", b"\x89PNG fake")
    output_repo.add_sample(session, job.id, step=2, index=0, prompt="a fox", with_lora=True, storage_key=key)
    session.commit()

    metrics = client.get(f"/v1/jobs/{job.id}/metrics", headers=headers).json()
    assert metrics == {"series": {"loss": {"steps": [1, 2, 3], "values": [1.0, 0.5, 1.0 / 3]}}}
    checkpoints = client.get(f"/v1/jobs/{job.id}/checkpoints", headers=headers).json()["data"]
    assert [(c["step"], c["metrics"]) for c in checkpoints] == [(2, {"loss": 0.5})]
    samples = client.get(f"/v1/jobs/{job.id}/samples", headers=headers).json()["data"]
    assert [(s["step"], s["prompt"], s["with_lora"]) for s in samples] == [(2, "a fox", True)]
    image = client.get(samples[0]["url"], headers=headers)
    assert (image.status_code, image.content, image.headers["content-type"]) == (
        200,
        b"\x89PNG fake",
        "image/png",
    )

    stranger = auth_headers(session)
    for path in ("metrics", "checkpoints", "samples", "adapter"):
        assert client.get(f"/v1/jobs/{job.id}/{path}", headers=stranger).status_code == 404
    assert client.get(samples[0]["url"], headers=stranger).status_code == 404

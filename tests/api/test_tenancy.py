"""Every /v1 route asks for a key, and another tenant's objects answer 404 on every route.

The route table below must name every /v1 route the app serves: a new route fails
`test_every_v1_route_is_covered` until it is added here, so no route escapes the tenancy check.
"""

import hashlib
import io
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from core.models import Tenant
from core.repositories import events as event_repo
from core.repositories import metrics as metric_repo
from core.repositories import outputs as output_repo
from core.repositories.metrics import MetricPoint
from core.settings import Settings
from core.storage import LocalStorage, job_key
from tests.support.archives import pairs_zip
from tests.support.factories import auth_headers, create_job, create_tenant


@dataclass(frozen=True)
class Owned:
    """The owner's objects, all real: a stored dataset and a finished job with every kind of output."""

    dataset_id: str
    job_id: str
    sample_id: int
    upload_id: str  # complete, not yet a dataset


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    kwargs: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)  # beside the key


TUS = {"Tus-Resumable": "1.0.0"}
PART = {**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}


def calls(owned: Owned) -> dict[tuple[str, str], Call]:
    """One request per route template, aimed at the owner's objects."""
    ds, job, up = owned.dataset_id, owned.job_id, owned.upload_id
    zipped = {"files": {"file": ("pairs.zip", pairs_zip())}}
    table = {
        ("POST", "/v1/datasets"): Call("POST", "/v1/datasets", zipped),
        ("GET", "/v1/datasets"): Call("GET", "/v1/datasets", {}),
        ("GET", "/v1/datasets/{dataset_id}"): Call("GET", f"/v1/datasets/{ds}", {}),
        ("DELETE", "/v1/datasets/{dataset_id}"): Call("DELETE", f"/v1/datasets/{ds}", {}),
        ("GET", "/v1/datasets/{dataset_id}/pairs"): Call("GET", f"/v1/datasets/{ds}/pairs", {}),
        ("GET", "/v1/datasets/{dataset_id}/pairs/{n}/{role}"): Call(
            "GET", f"/v1/datasets/{ds}/pairs/0/chosen", {}
        ),
        ("POST", "/v1/jobs"): Call("POST", "/v1/jobs", {"json": {"dataset_id": ds, "base_model": "tiny-sd"}}),
        ("POST", "/v1/jobs/estimate"): Call(
            "POST", "/v1/jobs/estimate", {"json": {"dataset_id": ds, "base_model": "tiny-sd"}}
        ),
        ("GET", "/v1/jobs"): Call("GET", "/v1/jobs", {}),
        ("GET", "/v1/jobs/{job_id}"): Call("GET", f"/v1/jobs/{job}", {}),
        ("DELETE", "/v1/jobs/{job_id}"): Call("DELETE", f"/v1/jobs/{job}", {}),
        ("POST", "/v1/jobs/{job_id}/cancel"): Call("POST", f"/v1/jobs/{job}/cancel", {}),
        ("GET", "/v1/jobs/{job_id}/events"): Call("GET", f"/v1/jobs/{job}/events", {}),
        ("GET", "/v1/jobs/{job_id}/metrics"): Call("GET", f"/v1/jobs/{job}/metrics", {}),
        ("GET", "/v1/jobs/{job_id}/checkpoints"): Call("GET", f"/v1/jobs/{job}/checkpoints", {}),
        ("GET", "/v1/jobs/{job_id}/samples"): Call("GET", f"/v1/jobs/{job}/samples", {}),
        ("GET", "/v1/jobs/{job_id}/samples/{sample_id}/image"): Call(
            "GET", f"/v1/jobs/{job}/samples/{owned.sample_id}/image", {}
        ),
        ("GET", "/v1/jobs/{job_id}/adapter"): Call("GET", f"/v1/jobs/{job}/adapter", {}),
        ("GET", "/v1/jobs/{job_id}/webhook-deliveries"): Call(
            "GET", f"/v1/jobs/{job}/webhook-deliveries", {}
        ),
        ("GET", "/v1/webhooks/secret"): Call("GET", "/v1/webhooks/secret", {}),
        ("POST", "/v1/webhooks/secret/rotate"): Call("POST", "/v1/webhooks/secret/rotate", {}),
        ("GET", "/v1/workers"): Call("GET", "/v1/workers", {}),
        ("GET", "/v1/base-models"): Call("GET", "/v1/base-models", {}),
        ("OPTIONS", "/v1/uploads"): Call("OPTIONS", "/v1/uploads", {}),
        ("POST", "/v1/uploads"): Call("POST", "/v1/uploads", {}, {**TUS, "Upload-Length": "4"}),
        ("HEAD", "/v1/uploads/{upload_id}"): Call("HEAD", f"/v1/uploads/{up}", {}, TUS),
        ("GET", "/v1/uploads/{upload_id}"): Call("GET", f"/v1/uploads/{up}", {}),
        ("PATCH", "/v1/uploads/{upload_id}"): Call("PATCH", f"/v1/uploads/{up}", {"content": b"abcd"}, PART),
        ("DELETE", "/v1/uploads/{upload_id}"): Call("DELETE", f"/v1/uploads/{up}", {}, TUS),
        ("POST", "/v1/uploads/{upload_id}/dataset"): Call("POST", f"/v1/uploads/{up}/dataset", {"json": {}}),
    }
    return table


# Routes that create rather than read: a stranger's request succeeds for the stranger, on their own data.
CREATES = {("POST", "/v1/datasets"), ("POST", "/v1/uploads")}
# Lists answer 200 with only the caller's rows.
LISTS = {("GET", "/v1/datasets"), ("GET", "/v1/jobs")}
# Shared infrastructure every key may read: it holds no tenant's data.
SHARED = {("GET", "/v1/workers"), ("GET", "/v1/base-models")}
# The caller's own webhook secret: a stranger gets (and rotates) theirs, never the owner's.
OWN_SECRET = {("GET", "/v1/webhooks/secret"), ("POST", "/v1/webhooks/secret/rotate")}
# tus discovery: what the server takes, the same for every key.
DISCOVERY = {("OPTIONS", "/v1/uploads")}


def v1_routes(client: TestClient) -> set[tuple[str, str]]:
    """Every (method, path template) under /v1 that the OpenAPI document publishes."""
    paths = client.get("/openapi.json").json()["paths"]
    return {(m.upper(), path) for path, ops in paths.items() if path.startswith("/v1/") for m in ops}


@pytest.fixture
def owner(session: Session) -> Tenant:
    tenant = create_tenant(session)
    session.commit()
    return tenant


@pytest.fixture
def owned(client: TestClient, session: Session, settings: Settings, owner: Tenant) -> Owned:
    headers = auth_headers(session, owner)
    response = client.post("/v1/datasets", files={"file": ("pairs.zip", pairs_zip())}, headers=headers)
    assert response.status_code == 201, response.text
    dataset_id = response.json()["id"]
    job = create_job(session, tenant_id=owner.id, dataset_id=dataset_id, status="succeeded")
    storage = LocalStorage(settings.storage_root)
    prefix = job_key(owner.id, job.id)
    adapter = storage.write_stream(f"{prefix}/adapter.safetensors", io.BytesIO(b"lora"))
    output_repo.add_artifact(
        session,
        job.id,
        format="diffusers",
        storage_key=adapter.key,
        size_bytes=4,
        sha256=hashlib.sha256(b"lora").hexdigest(),
    )
    image = storage.write_stream(f"{prefix}/samples/step-1/0-lora.png", io.BytesIO(b"\x89PNG"))
    output_repo.add_sample(
        session, job.id, step=1, index=0, prompt="a fox", with_lora=True, storage_key=image.key
    )
    output_repo.add_checkpoint(session, job.id, step=1, storage_key=f"{prefix}/checkpoint-1", metrics={})
    metric_repo.add_metrics(session, job.id, [MetricPoint(1, "loss", 0.5)])
    event_repo.append_event(session, job.id, "succeeded", "done")
    session.commit()
    (sample,) = client.get(f"/v1/jobs/{job.id}/samples", headers=headers).json()["data"]
    archive = pairs_zip()
    created = client.post("/v1/uploads", headers={**headers, **TUS, "Upload-Length": str(len(archive))})
    upload_id = created.json()["id"]
    part = client.patch(f"/v1/uploads/{upload_id}", content=archive, headers={**headers, **PART})
    assert part.status_code == 204, part.text
    return Owned(dataset_id=dataset_id, job_id=job.id, sample_id=sample["id"], upload_id=upload_id)


def test_every_v1_route_is_covered(client: TestClient, owned: Owned) -> None:
    assert v1_routes(client) == set(calls(owned))


def test_every_v1_route_refuses_a_request_without_a_valid_key(client: TestClient, owned: Owned) -> None:
    for call in calls(owned).values():
        for headers in ({}, {"Authorization": "Bearer mapo_not-a-key"}, {"Authorization": "Basic eDp5"}):
            response = client.request(call.method, call.path, headers=headers | call.headers, **call.kwargs)
            assert response.status_code == 401, (call, headers, response.text)
            if call.method != "HEAD":  # a HEAD answer has no body
                assert response.json()["error"]["code"] == "unauthenticated"


def test_another_tenant_gets_404_on_every_route_and_changes_nothing(
    client: TestClient, session: Session, owner: Tenant, owned: Owned
) -> None:
    stranger = auth_headers(session)
    owner_secret = client.get("/v1/webhooks/secret", headers=auth_headers(session, owner)).json()["secret"]
    for route, call in calls(owned).items():
        response = client.request(call.method, call.path, headers=stranger | call.headers, **call.kwargs)
        if route in CREATES:
            assert response.status_code == 201, (route, response.text)
        elif route in SHARED:
            assert response.status_code == 200, (route, response.text)
        elif route in DISCOVERY:
            assert response.status_code == 204, (route, response.text)
        elif route in OWN_SECRET:
            assert response.status_code == 200 and response.json()["secret"] != owner_secret, route
        elif route in LISTS:
            mine = [row["id"] for row in response.json()["data"]]
            assert owned.dataset_id not in mine and owned.job_id not in mine, route
        else:
            assert response.status_code == 404, (route, response.status_code, response.text)
            if call.method != "HEAD":
                assert response.json()["error"]["code"].endswith("not_found"), route

    # The owner still sees everything as it was: the stranger's DELETE and cancel touched nothing.
    headers = auth_headers(session, owner)
    for route, call in calls(owned).items():
        if call.method == "GET":
            response = client.get(call.path, headers=headers)
            assert response.status_code == 200, (route, response.text)
    assert client.get(f"/v1/jobs/{owned.job_id}", headers=headers).json()["status"] == "succeeded"
    upload = client.get(f"/v1/uploads/{owned.upload_id}", headers=headers).json()
    assert (upload["offset"], upload["dataset_id"]) == (upload["length"], None)

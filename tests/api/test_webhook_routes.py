"""Webhooks over the API: hooks in the job spec, the tenant's signing secret, the delivery log."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from core.models import Tenant
from tests.support.api_calls import job_body
from tests.support.factories import auth_headers, create_dataset, create_tenant

HOOK = "https://hooks.example.com/mapo"


@pytest.fixture
def tenant_id(session: Session) -> str:
    tenant = create_tenant(session)
    session.commit()
    return tenant.id


@pytest.fixture
def headers(session: Session, tenant_id: str) -> dict[str, str]:
    return auth_headers(session, session.get_one(Tenant, tenant_id))


@pytest.fixture
def dataset_id(session: Session, tenant_id: str) -> str:
    dataset = create_dataset(session, tenant_id=tenant_id)
    session.commit()
    return dataset.id


def test_a_job_keeps_its_hooks_with_the_default_events(
    client: TestClient, headers: dict[str, str], dataset_id: str
) -> None:
    hooks = [{"url": HOOK}, {"url": "http://10.0.0.5:8080/in", "events": ["checkpoint", "started"]}]
    response = client.post("/v1/jobs", json=job_body(dataset_id, webhooks=hooks), headers=headers)
    assert response.status_code == 201, response.text
    assert response.json()["webhooks"] == [
        {"url": HOOK, "events": ["succeeded", "failed", "cancelled"]},
        {"url": "http://10.0.0.5:8080/in", "events": ["checkpoint", "started"]},
    ]
    job_id = response.json()["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=headers).json()["webhooks"][1]["events"] == [
        "checkpoint",
        "started",
    ]


@pytest.mark.parametrize(
    ("webhooks", "param"),
    [
        ([{"url": "ftp://hooks.example.com/x"}], "webhooks.0.url"),
        ([{"url": "not a url"}], "webhooks.0.url"),
        ([{"url": HOOK, "events": ["succeeded", "finished"]}], "webhooks.0.events.1"),
        ([{"url": HOOK, "events": []}], "webhooks.0.events"),
        ([{"url": HOOK, "events": ["failed", "failed"]}], "webhooks.0.events"),
        ([{"url": HOOK, "secret": "mine"}], "webhooks.0.secret"),
        ([{"url": HOOK}, {"url": HOOK, "events": ["started"]}], "webhooks"),
        ([{"url": f"{HOOK}/{i}"} for i in range(6)], "webhooks"),
    ],
)
def test_a_bad_hook_is_a_422_naming_the_field(
    client: TestClient, headers: dict[str, str], dataset_id: str, webhooks: list[Any], param: str
) -> None:
    response = client.post("/v1/jobs", json=job_body(dataset_id, webhooks=webhooks), headers=headers)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["message"].startswith(param)


def test_the_secret_is_created_once_per_tenant_and_rotates_with_a_grace_period(
    client: TestClient, session: Session, headers: dict[str, str]
) -> None:
    first = client.get("/v1/webhooks/secret", headers=headers).json()
    assert first["secret"].startswith("whsec_") and first["previous_secret_expires_at"] is None
    assert client.get("/v1/webhooks/secret", headers=headers).json()["secret"] == first["secret"]
    other = client.get("/v1/webhooks/secret", headers=auth_headers(session)).json()
    assert other["secret"] != first["secret"], "each tenant has its own"
    rotated = client.post("/v1/webhooks/secret/rotate", headers=headers).json()
    assert rotated["secret"] != first["secret"] and rotated["previous_secret_expires_at"] is not None
    assert client.get("/v1/webhooks/secret", headers=headers).json()["secret"] == rotated["secret"]
    assert client.get("/v1/webhooks/secret").status_code == 401


def test_cancelling_a_queued_job_records_a_delivery_only_its_owner_sees(
    client: TestClient, session: Session, headers: dict[str, str], dataset_id: str
) -> None:
    hooks = [{"url": HOOK, "events": ["cancelled"]}, {"url": f"{HOOK}/2", "events": ["succeeded"]}]
    job = client.post("/v1/jobs", json=job_body(dataset_id, webhooks=hooks), headers=headers).json()
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers).json()["status"] == "cancelled"
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)  # repeating sends nothing more
    page = client.get(f"/v1/jobs/{job['id']}/webhook-deliveries", headers=headers).json()
    assert page["has_more"] is False
    [delivery] = page["data"]
    assert delivery["id"].startswith("msg_")
    assert (delivery["event"], delivery["url"], delivery["status"]) == ("cancelled", HOOK, "pending")
    assert delivery["attempts"] == [] and delivery["next_attempt_at"] is not None
    stranger = client.get(f"/v1/jobs/{job['id']}/webhook-deliveries", headers=auth_headers(session))
    assert stranger.status_code == 404 and stranger.json()["error"]["param"] == "job_id"

"""Every integer, float and free-text field the API takes has the bounds of what stores and uses it: past
them is a 422 naming the field, never a 500 or a job that fails on the GPU."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from tests.support.factories import auth_headers, create_dataset, create_job, create_tenant

MEGABYTE = "x" * 1_000_000


@pytest.fixture
def headers_and_dataset(session: Session) -> tuple[dict[str, str], str]:
    tenant = create_tenant(session)
    dataset = create_dataset(session, tenant_id=tenant.id)
    session.commit()
    return auth_headers(session, tenant), dataset.id


def post_raw(client: TestClient, headers: dict[str, str], body: str) -> Any:
    """POST a body as written (json.dumps cannot write 1e309 or Infinity the way a careless client does)."""
    return client.post("/v1/jobs", content=body, headers={**headers, "Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"seed": 2**63}, "seed"),
        ({"seed": 2**31}, "seed"),
        ({"seed": 2**64 + 1}, "seed"),
        ({"validation": {"prompts": ["a cat"], "seed": 2**40}}, "validation.seed"),
        ({"hyperparameters": {"max_train_steps": 2**63}}, "hyperparameters.max_train_steps"),
        (
            {"hyperparameters": {"checkpoint_every_n_steps": 2**62}},
            "hyperparameters.checkpoint_every_n_steps",
        ),
        ({"metadata": {"k": MEGABYTE}}, "metadata"),
        ({"metadata": {MEGABYTE: "v"}}, "metadata"),
        ({"validation": {"prompts": [MEGABYTE]}}, "validation.prompts"),
        (
            {"hyperparameters": {"lora_target_modules": ["to_q"] * 100_000}},
            "hyperparameters.lora_target_modules",
        ),
        ({"hyperparameters": {"adam_weight_decay": 1e300}}, "hyperparameters.adam_weight_decay"),
    ],
)
def test_out_of_bounds_fields_are_422_naming_them(
    client: TestClient, headers_and_dataset: tuple[dict[str, str], str], fields: dict[str, Any], param: str
) -> None:
    headers, dataset_id = headers_and_dataset
    body = {"dataset_id": dataset_id, "base_model": "tiny-sd", **fields}
    response = client.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 422, response.text[:500]
    assert response.json()["error"]["param"].startswith(param)


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ('"beta": 1e309', "hyperparameters.beta"),
        ('"adam_weight_decay": Infinity', "hyperparameters.adam_weight_decay"),
        ('"learning_rate": NaN', "hyperparameters.learning_rate"),
        ('"guidance": -Infinity', "hyperparameters.guidance"),
    ],
)
def test_infinite_or_nan_floats_are_422_naming_the_field(
    client: TestClient, headers_and_dataset: tuple[dict[str, str], str], raw: str, param: str
) -> None:
    headers, dataset_id = headers_and_dataset
    body = (
        f'{{"dataset_id": {json.dumps(dataset_id)}, "base_model": "tiny-sd", "hyperparameters": {{{raw}}}}}'
    )
    response = post_raw(client, headers, body)
    assert response.status_code == 422, response.text[:500]
    assert response.json()["error"]["param"] == param


def test_integers_past_int64_in_paths_queries_and_headers_are_422(
    client: TestClient, session: Session
) -> None:
    tenant = create_tenant(session)
    job = create_job(session, tenant_id=tenant.id)
    session.commit()
    headers = auth_headers(session, tenant)
    huge = str(2**63)  # past both bounds (event ids are stored as INTEGER, pair indices are 64-bit)
    for path in (
        f"/v1/jobs/{job.id}/events?after={huge}",
        f"/v1/jobs/{job.id}/samples/{2**64}/image",
        f"/v1/datasets/{job.dataset_id}/pairs/{huge}/chosen",
        f"/v1/datasets/{job.dataset_id}/pairs?after={huge}",
    ):
        response = client.get(path, headers=headers)
        assert response.status_code == 422, (path, response.status_code, response.text[:300])
    stream = client.get(
        f"/v1/jobs/{job.id}/events",
        headers={**headers, "Accept": "text/event-stream", "Last-Event-ID": huge},
    )
    assert stream.status_code == 422
    # The largest stored value itself is fine: nothing after it, nothing found.
    assert client.get(f"/v1/jobs/{job.id}/events?after={2**31 - 1}", headers=headers).json()["data"] == []


def test_the_largest_storable_seed_is_accepted(
    client: TestClient, headers_and_dataset: tuple[dict[str, str], str]
) -> None:
    headers, dataset_id = headers_and_dataset
    body = {"dataset_id": dataset_id, "base_model": "tiny-sd", "seed": 2**31 - 1}
    assert client.post("/v1/jobs", json=body, headers=headers).status_code == 201

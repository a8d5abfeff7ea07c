"""Requests to the API that several test modules make: a job's body, a dataset upload."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient


def job_body(dataset_id: str, **overrides: Any) -> dict[str, Any]:
    """A POST /v1/jobs body: 5 steps of tiny-sd on `dataset_id`, with `overrides`."""
    body = {"dataset_id": dataset_id, "base_model": "tiny-sd", "hyperparameters": {"max_train_steps": 5}}
    return {**body, **overrides}


def upload(
    client: TestClient, headers: dict[str, str], payload: bytes, name: str | None = "demo"
) -> dict[str, Any]:
    """POST /v1/datasets of the zip `payload` (named `name`): the answer's JSON and its `http_status`."""
    data = {"name": name} if name else {}
    response = client.post("/v1/datasets", files={"file": ("pairs.zip", payload)}, data=data, headers=headers)
    return {"http_status": response.status_code, **response.json()}

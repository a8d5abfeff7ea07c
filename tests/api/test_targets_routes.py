"""Targets and avoid datasets over HTTP: upload with `kind`, see it, and which side is drawn later."""

from __future__ import annotations

import io
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.orm import Session

from core.models import Dataset
from tests.support.archives import pairs_zip, targets_zip
from tests.support.factories import auth_headers


@pytest.fixture
def headers(session: Session) -> dict[str, str]:
    return auth_headers(session)


def upload(client: TestClient, headers: dict[str, str], payload: bytes, kind: str | None) -> dict[str, Any]:
    data = {"kind": kind} if kind else {}
    response = client.post("/v1/datasets", files={"file": ("up.zip", payload)}, data=data, headers=headers)
    return {"http_status": response.status_code, **response.json()}


def test_targets_upload_is_a_dataset_of_that_kind_whose_rejected_side_is_drawn_later(
    client: TestClient, headers: dict[str, str], session: Session
) -> None:
    dataset = upload(client, headers, targets_zip(generation_prompt=False), "targets")
    assert (dataset["http_status"], dataset["kind"], dataset["num_pairs"]) == (201, "targets", 3), dataset
    again = client.get(f"/v1/datasets/{dataset['id']}", headers=headers).json()
    assert (again["kind"], again["num_pairs"]) == ("targets", 3)
    assert [d["kind"] for d in client.get("/v1/datasets", headers=headers).json()["data"]] == ["targets"]
    row = session.get(Dataset, dataset["id"])
    assert row is not None and row.kind == "targets", "the row records the kind"

    pairs = client.get(f"/v1/datasets/{dataset['id']}/pairs", headers=headers).json()["data"]
    assert [p["prompt"] for p in pairs] == [f"a red square {i}" for i in range(3)]
    assert all(p["rejected_url"] is None for p in pairs)
    chosen = client.get(pairs[2]["chosen_url"], headers=headers)
    assert Image.open(io.BytesIO(chosen.content)).getpixel((0, 0)) == (202, 0, 0)
    drawn = client.get(f"/v1/datasets/{dataset['id']}/pairs/2/rejected", headers=headers)
    assert (drawn.status_code, drawn.json()["error"]["param"]) == (404, "role")
    assert "base model" in drawn.json()["error"]["message"]


def test_avoid_upload_holds_the_rejected_side(client: TestClient, headers: dict[str, str]) -> None:
    dataset = upload(client, headers, targets_zip(), "avoid")
    assert (dataset["http_status"], dataset["kind"]) == (201, "avoid"), dataset
    [first, *_] = dataset["preview"]
    assert first["chosen_url"] is None
    rejected = client.get(first["rejected_url"], headers=headers)
    assert Image.open(io.BytesIO(rejected.content)).getpixel((0, 0)) == (200, 0, 0)


def test_avoid_upload_without_generation_prompts_lists_each_row(
    client: TestClient, headers: dict[str, str]
) -> None:
    response = upload(client, headers, targets_zip(generation_prompt=False), "avoid")
    assert response["http_status"] == 422
    problems = response["error"]["problems"]
    assert {(p["row"], p["field"]) for p in problems} == {(i, "generation_prompt") for i in range(3)}


def test_an_upload_is_a_pairs_dataset_unless_told_otherwise(
    client: TestClient, headers: dict[str, str]
) -> None:
    dataset = upload(client, headers, pairs_zip(), None)
    assert (dataset["http_status"], dataset["kind"]) == (201, "pairs")
    assert all(p["rejected_url"] for p in dataset["preview"])


def test_unknown_kind_is_refused_naming_the_field(client: TestClient, headers: dict[str, str]) -> None:
    response = upload(client, headers, targets_zip(), "negatives")
    assert (response["http_status"], response["error"]["param"]) == (422, "kind")


def test_job_on_a_targets_dataset_takes_generation_settings(
    client: TestClient, headers: dict[str, str]
) -> None:
    dataset_id = upload(client, headers, targets_zip(), "targets")["id"]
    body = {"dataset_id": dataset_id, "base_model": "tiny-sd"}
    settings = {"generation": {"num_inference_steps": 4, "guidance_scale": 3.0}}
    created = client.post("/v1/jobs", json={**body, "hyperparameters": settings}, headers=headers)
    assert created.status_code == 201, created.json()
    bad = {"generation": {"num_inference_steps": 0}}
    refused = client.post("/v1/jobs", json={**body, "hyperparameters": bad}, headers=headers)
    assert refused.status_code == 422
    assert refused.json()["error"]["param"] == "hyperparameters.generation.num_inference_steps"

"""GET /v1/base-models describes each offered model from its folder, and a job may set only the
family-specific fields its base model takes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from core.db import Database
from core.settings import Settings
from tests.support.factories import auth_headers, create_dataset, create_tenant


@pytest.fixture
def models_client(
    settings: Settings, database: Database, tiny_flux: Path, tiny_sdxl: Path
) -> Iterator[TestClient]:
    from api.main import create_app

    offered = {"flux": str(tiny_flux), "sdxl": str(tiny_sdxl), "hub": "black-forest-labs/not-downloaded"}
    with TestClient(create_app(settings.model_copy(update={"base_models": offered}))) as client:
        yield client


def test_each_base_model_is_listed_with_its_family_read_from_its_folder(
    models_client: TestClient, session: Session
) -> None:
    response = models_client.get("/v1/base-models", headers=auth_headers(session))
    assert response.status_code == 200
    by_name = {m["name"]: m for m in response.json()["data"]}
    assert by_name["flux"] | {"fields": None} == {
        "name": "flux",
        "family": "flux",
        "objective": "flow_matching",
        "prediction_type": "flow",
        "native_resolution": 64,
        "methods": ["mapo", "dpo", "sft"],
        "fields": None,
    }
    assert "guidance" in by_name["flux"]["fields"] and "use_t5" not in by_name["flux"]["fields"]
    assert (by_name["sdxl"]["family"], by_name["sdxl"]["prediction_type"], by_name["sdxl"]["fields"]) == (
        "sdxl",
        "epsilon",
        [],
    )
    # A hub id this host has not downloaded: listed, family unknown (the worker checks it).
    assert by_name["hub"]["family"] is None and by_name["hub"]["fields"] == []


def test_base_models_need_an_api_key(models_client: TestClient) -> None:
    assert models_client.get("/v1/base-models").status_code == 401


def test_a_field_the_base_model_s_family_does_not_take_is_422_naming_it(
    models_client: TestClient, session: Session
) -> None:
    tenant = create_tenant(session)
    dataset = create_dataset(session, tenant_id=tenant.id)
    session.commit()
    headers = auth_headers(session, tenant)
    body = {"dataset_id": dataset.id, "base_model": "sdxl", "hyperparameters": {"guidance": 2.0}}
    response = models_client.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "hyperparameters.guidance" and "not to sdxl" in error["message"]

    flux = {**body, "base_model": "flux", "hyperparameters": {"guidance": 2.0, "weighting_scheme": "mode"}}
    assert models_client.post("/v1/jobs", json=flux, headers=headers).status_code == 201


def test_a_flow_model_s_resolution_off_its_patch_multiple_is_422_naming_it(
    models_client: TestClient, session: Session
) -> None:
    tenant = create_tenant(session)
    dataset = create_dataset(session, tenant_id=tenant.id)
    session.commit()
    headers = auth_headers(session, tenant)
    body = {"dataset_id": dataset.id, "base_model": "flux", "hyperparameters": {"resolution": 72}}
    response = models_client.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "hyperparameters.resolution" and "multiple of 16" in error["message"]

    on_the_multiple = {**body, "hyperparameters": {"resolution": 80}}
    assert models_client.post("/v1/jobs", json=on_the_multiple, headers=headers).status_code == 201
    unet = {**body, "base_model": "sdxl"}  # a UNet takes any multiple of 8
    assert models_client.post("/v1/jobs", json=unet, headers=headers).status_code == 201

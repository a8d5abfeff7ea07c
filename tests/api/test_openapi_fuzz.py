"""Property-based requests from the OpenAPI document (schemathesis): whatever a client sends that the
schema allows, or nearly allows, the API never answers 5xx and its answers match the schema."""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis import checks
from sqlalchemy.orm import Session

from api.main import create_app
from core.settings import Settings
from tests.api.test_dataset_routes import pairs_zip
from tests.conftest import auth_headers

EXAMPLES_PER_OPERATION = int(os.environ.get("MAPO_FUZZ_EXAMPLES", "25"))
# A request the schema allows may still be refused for what it holds (an upload that is no archive, a job
# on a base model the operator has not allowed): that check cannot hold for this API.
CONTENT_DEPENDENT = [checks.positive_data_acceptance]


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def headers(session: Session) -> dict[str, str]:
    return auth_headers(session)


def test_no_request_gets_a_5xx_and_every_answer_matches_the_schema(
    app: FastAPI, headers: dict[str, str]
) -> None:
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        # A real dataset and job, so that requests naming ids reach more than the 404 path.
        dataset = client.post("/v1/datasets", files={"file": ("p.zip", pairs_zip())}, headers=headers).json()
        client.post("/v1/jobs", json={"dataset_id": dataset["id"], "base_model": "tiny-sd"}, headers=headers)
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) > 15
        sent = sum(fuzz(operation, headers) for operation in operations)
    print(
        f"schemathesis: {sent} requests over {len(operations)} operations, no 5xx, all answers as documented"
    )


def fuzz(operation: Any, headers: dict[str, str]) -> int:
    """Send up to EXAMPLES_PER_OPERATION generated requests to one operation; returns how many were sent."""
    sent = 0

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        nonlocal sent
        sent += 1
        case.call_and_validate(headers=headers, excluded_checks=CONTENT_DEPENDENT)

    try:
        run()
    except Exception as exc:
        raise AssertionError(f"{operation.label}: {exc}") from exc
    return sent

"""Property-based requests from the OpenAPI document (schemathesis): whatever a client sends that the
schema allows, or nearly allows, the API never answers 5xx and its answers match the schema. Then the
boundary values (0, -1, 2^31, 2^32, 2^53, 2^63, 2^64, inf, NaN, a 1 MB string) on every parameter of
every operation: path, query, header, form field, and each JSON body field (one level down too)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import checks
from sqlalchemy.orm import Session

from api.main import create_app
from core.settings import Settings
from tests.support.archives import pairs_zip
from tests.support.factories import auth_headers

EXAMPLES_PER_OPERATION = int(os.environ.get("MAPO_FUZZ_EXAMPLES", "25"))
# A request the schema allows may still be refused for what it holds (an upload that is no archive, a job
# on a base model the operator has not allowed): that check cannot hold for this API.
CONTENT_DEPENDENT = [checks.positive_data_acceptance]
# A tus part (PATCH /v1/uploads/{id}) is raw bytes under tus's own media type.
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")


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


MEGABYTE_STRING = "x" * (1 << 20)
# httpx refuses a URL part over 64 KiB (and uvicorn a request line over 16 KiB, so no longer one can reach
# the app): path and query parameters get the longest string a client can send instead.
LONGEST_URL_STRING = "x" * 60_000
BOUNDARY_VALUES: list[Any] = [
    0,
    -1,
    2**31,
    2**32,
    2**53,
    2**63,
    2**64,
    math.inf,
    -math.inf,
    math.nan,
    MEGABYTE_STRING,
]
# Operations whose answer never ends (an event stream) or that change what the other requests use.
SKIPPED = {("POST", "/v1/webhooks/secret/rotate")}


def test_boundary_values_on_every_parameter_get_no_5xx(app: FastAPI, headers: dict[str, str]) -> None:
    with TestClient(app) as client:
        dataset = client.post("/v1/datasets", files={"file": ("p.zip", pairs_zip())}, headers=headers).json()
        job = client.post(
            "/v1/jobs", json={"dataset_id": dataset["id"], "base_model": "tiny-sd"}, headers=headers
        ).json()
        # Every request says the tus version, so that the upload routes get past that check.
        headers = {**headers, "Tus-Resumable": "1.0.0"}
        upload = client.post("/v1/uploads", headers={**headers, "Upload-Length": "10"}).json()
        ids = {"dataset_id": dataset["id"], "job_id": job["id"], "n": "0", "role": "chosen", "sample_id": "1"}
        ids["upload_id"] = upload["id"]
        document = client.get("/openapi.json").json()
        sent, failures = 0, []
        for method, path, operation in operations(document):
            for what, request in boundary_requests(document, path, operation, ids, headers):
                response = client.request(method, **request)
                sent += 1
                if response.status_code >= 500:
                    failures.append(f"{method} {path} {what}: {response.status_code} {response.text[:200]}")
    assert not failures, f"{len(failures)} of {sent} requests got a 5xx: {failures[:20]}"
    print(f"boundary values: {sent} requests, no 5xx")


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            if (method.upper(), path) not in SKIPPED:
                yield method.upper(), path, operation


def what(value: Any) -> str:
    """A boundary value as a failure message names it."""
    return "1 MB string" if value is MEGABYTE_STRING else repr(value)


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else str(int(value) if isinstance(value, int) else value)


def boundary_requests(
    document: dict[str, Any],
    path: str,
    operation: dict[str, Any],
    ids: dict[str, str],
    headers: dict[str, str],
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each request varies one parameter (or body field) to one boundary value; the rest are valid."""
    parameters = operation.get("parameters", [])
    for parameter in parameters:
        for value in BOUNDARY_VALUES:
            url, query, extra = path, {}, {}
            in_url = LONGEST_URL_STRING if value is MEGABYTE_STRING else as_text(value)
            for other in (p for p in parameters if p["in"] == "path"):
                given = in_url if other is parameter else ids[other["name"]]
                url = url.replace("{" + other["name"] + "}", given)
            if parameter["in"] == "query":
                query[parameter["name"]] = in_url
            elif parameter["in"] == "header":
                extra[parameter["name"]] = as_text(value)
            yield (
                f"{parameter['name']}={what(value)}",
                {"url": url, "params": query, "headers": {**headers, **extra}},
            )
    body = operation.get("requestBody", {}).get("content", {})
    if "multipart/form-data" in body:
        yield from _form_requests(path, body["multipart/form-data"]["schema"], headers)
    if "application/json" in body:
        schema = resolve(document, body["application/json"]["schema"])
        yield from _json_requests(document, path, schema, ids, headers)


def _form_requests(
    path: str, schema: dict[str, Any], headers: dict[str, str]
) -> Iterator[tuple[str, dict[str, Any]]]:
    for field in schema["properties"]:
        for value in BOUNDARY_VALUES:
            text = as_text(value)
            files = {"file": ("p.zip", text.encode() if field == "file" else pairs_zip())}
            data = {} if field == "file" else {field: text}
            yield f"{field}={what(value)}", {"url": path, "files": files, "data": data, "headers": headers}


def _json_requests(
    document: dict[str, Any], path: str, schema: dict[str, Any], ids: dict[str, str], headers: dict[str, str]
) -> Iterator[tuple[str, dict[str, Any]]]:
    base = {"dataset_id": ids["dataset_id"], "base_model": "tiny-sd"}
    for field, field_schema in schema.get("properties", {}).items():
        nested = resolve(document, field_schema).get("properties", {})
        for name in [(field,), *((field, inner) for inner in nested)]:
            for value in BOUNDARY_VALUES:
                body = {**base, name[0]: value if len(name) == 1 else {name[1]: value}}
                # json.dumps writes inf and NaN as the tokens Infinity and NaN, which Python's parser reads.
                content = json.dumps(body)
                json_headers = {**headers, "Content-Type": "application/json"}
                yield (
                    f"{'.'.join(name)}={what(value)}",
                    {"url": path, "content": content, "headers": json_headers},
                )


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The schema a $ref (or an optional $ref: anyOf [$ref, null]) points at."""
    for option in schema.get("anyOf", []):
        if "$ref" in option:
            schema = option
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return dict(document["components"]["schemas"][name])
    return schema

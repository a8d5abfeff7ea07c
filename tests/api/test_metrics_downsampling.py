"""GET /v1/jobs/{id}/metrics?max_points=N: a long job's curves thinned for plotting, short ones untouched."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from core.repositories import metrics as metric_repo
from core.repositories.metrics import MetricPoint
from tests.support.factories import auth_headers, create_job, create_tenant


@pytest.fixture
def job_and_headers(session: Session) -> tuple[str, dict[str, str]]:
    """A job with loss and lr at every step 1..1000 and held-out accuracy every 100 steps from 0."""
    tenant = create_tenant(session)
    job = create_job(session, tenant_id=tenant.id)
    points = [
        MetricPoint(s, name, s / 1000 + offset)
        for s in range(1, 1001)
        for name, offset in (("loss", 0.0), ("lr", 5.0))
    ]
    points += [MetricPoint(s, "heldout_accuracy", 0.5 + s / 4000) for s in range(0, 1001, 100)]
    metric_repo.add_metrics(session, job.id, points)
    session.commit()
    return job.id, auth_headers(session, tenant)


def series(client: TestClient, job_id: str, headers: dict[str, str], query: str = "") -> dict[str, Any]:
    response = client.get(f"/v1/jobs/{job_id}/metrics{query}", headers=headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()["series"]
    return result


def test_a_long_series_keeps_its_first_and_last_points_and_an_even_grid_between(
    client: TestClient, job_and_headers: tuple[str, dict[str, str]]
) -> None:
    job_id, headers = job_and_headers
    thinned = series(client, job_id, headers, "?max_points=100")

    loss = thinned["loss"]
    assert 50 <= len(loss["steps"]) <= 100
    assert (loss["steps"][0], loss["steps"][-1]) == (1, 1000)
    gaps = {b - a for a, b in zip(loss["steps"][:-2], loss["steps"][1:-1], strict=True)}
    assert len(gaps) == 1  # evenly spaced up to the last point
    assert loss["values"] == [step / 1000 for step in loss["steps"]]
    assert thinned["lr"]["steps"] == loss["steps"]
    assert thinned["lr"]["values"] == [step / 1000 + 5.0 for step in loss["steps"]]


def test_a_series_shorter_than_max_points_comes_whole(
    client: TestClient, job_and_headers: tuple[str, dict[str, str]]
) -> None:
    job_id, headers = job_and_headers
    whole = series(client, job_id, headers)
    thinned = series(client, job_id, headers, "?max_points=100")
    assert thinned["heldout_accuracy"] == whole["heldout_accuracy"]
    assert whole["heldout_accuracy"]["steps"] == list(range(0, 1001, 100))
    assert whole["loss"]["steps"] == list(range(1, 1001))
    assert series(client, job_id, headers, "?max_points=5000") == whole


def test_a_series_logged_every_n_steps_is_sampled_on_its_own_steps(
    client: TestClient, session: Session
) -> None:
    tenant = create_tenant(session)
    job = create_job(session, tenant_id=tenant.id)
    metric_repo.add_metrics(
        session, job.id, [MetricPoint(s, "heldout_accuracy", s) for s in range(0, 7001, 7)]
    )
    session.commit()
    steps = series(client, job.id, auth_headers(session, tenant), "?max_points=50")["heldout_accuracy"][
        "steps"
    ]
    assert 25 <= len(steps) <= 50
    assert (steps[0], steps[-1]) == (0, 7000)
    assert all(step % 7 == 0 for step in steps)


@pytest.mark.parametrize("max_points", ["1", "10001", "many"])
def test_max_points_out_of_range_is_a_422_naming_it(
    client: TestClient, job_and_headers: tuple[str, dict[str, str]], max_points: str
) -> None:
    job_id, headers = job_and_headers
    response = client.get(f"/v1/jobs/{job_id}/metrics?max_points={max_points}", headers=headers)
    assert (response.status_code, response.json()["error"]["param"]) == (422, "max_points")


def test_max_points_is_documented_in_openapi(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/metrics"]["get"]
    (parameter,) = [p for p in operation["parameters"] if p["name"] == "max_points"]
    assert parameter["in"] == "query" and not parameter.get("required", False)
    assert "at most this many points" in parameter["description"]

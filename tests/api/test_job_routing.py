"""A job names its queue (one per GPU class) and a priority; the API checks the queue against the
server's and sends the task there."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.settings import Settings
from tests.support.api_calls import job_body
from tests.support.broker import received_task_args


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"queues": ["mapo.gpu", "mapo.gpu.h100"]})


def test_a_job_is_sent_to_the_queue_it_names_with_its_priority(
    client: TestClient, headers: dict[str, str], dataset_id: str, settings: Settings
) -> None:
    body = job_body(dataset_id, queue="mapo.gpu.h100", priority=7)
    response = client.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 201, response.text
    job = response.json()
    assert (job["queue"], job["priority"]) == ("mapo.gpu.h100", 7)
    assert received_task_args(settings, "mapo.gpu.h100") == [[job["id"]]]
    assert received_task_args(settings) == []
    assert client.get(f"/v1/jobs/{job['id']}", headers=headers).json()["queue"] == "mapo.gpu.h100"


def test_a_job_without_a_queue_goes_to_the_first_configured_one_at_priority_0(
    client: TestClient, headers: dict[str, str], dataset_id: str, settings: Settings
) -> None:
    job = client.post("/v1/jobs", json=job_body(dataset_id), headers=headers).json()
    assert (job["queue"], job["priority"]) == ("mapo.gpu", 0)
    assert received_task_args(settings, "mapo.gpu") == [[job["id"]]]


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"queue": "mapo.gpu.b200"}, "queue"),
        ({"priority": 10}, "priority"),
        ({"priority": -1}, "priority"),
    ],
)
def test_an_unknown_queue_or_a_priority_out_of_range_is_422_naming_it(
    client: TestClient,
    headers: dict[str, str],
    dataset_id: str,
    settings: Settings,
    overrides: dict[str, Any],
    param: str,
) -> None:
    response = client.post("/v1/jobs", json=job_body(dataset_id, **overrides), headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param
    if param == "queue":
        assert "mapo.gpu.h100" in response.json()["error"]["message"], "the allowed queues are named"
    assert received_task_args(settings) == []

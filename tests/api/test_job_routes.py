import io
import json
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.db import Database
from core.models import Artifact, Checkpoint, Job, JobEvent, Metric, Sample, WebhookDelivery
from core.repositories import events as event_repo
from core.repositories import jobs as job_repo
from core.repositories import metrics as metric_repo
from core.repositories import outputs as output_repo
from core.repositories import webhooks as webhook_repo
from core.repositories.metrics import MetricPoint
from core.settings import Settings
from core.storage import Storage, job_key
from tests.support.api_calls import job_body
from tests.support.broker import received_task_args
from tests.support.factories import auth_headers, create_job, create_tenant


def test_create_job_queues_it_and_enqueues_the_task_after_commit(
    client: TestClient,
    headers: dict[str, str],
    dataset_id: str,
    settings: Settings,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    producer = client.app.state.context.producer  # type: ignore[attr-defined]
    send_task = producer.send_task
    committed_at_send: list[bool] = []

    def send_and_check(name: str, args: list[Any], **options: Any) -> Any:
        # A worker that gets the message at once must find the row: look from another connection.
        with database.sessions() as other:
            committed_at_send.append(job_repo.get_job_any_tenant(other, args[0]) is not None)
        return send_task(name, args=args, **options)

    # On the producer itself, so the check holds whichever module sends the task.
    monkeypatch.setattr(producer, "send_task", send_and_check)
    response = client.post("/v1/jobs", json=job_body(dataset_id, seed=3), headers=headers)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued"
    assert job["progress"] == {"step": 0, "total_steps": 5, "eta_seconds": None}
    assert job["hyperparameters"]["max_train_steps"] == 5 and job["seed"] == 3
    assert received_task_args(settings) == [[job["id"]]]
    assert committed_at_send == [True], "the task was sent before the job's row was committed"
    assert client.get(f"/v1/jobs/{job['id']}", headers=headers).json()["status"] == "queued"


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"hyperparameters": {"learning_rate": -1.0}}, "hyperparameters.learning_rate"),
        ({"hyperparameters": {"lr_warmup_steps": 10}}, "hyperparameters.lr_warmup_steps"),
        ({"hyperparameters": {"resolution": 100}}, "hyperparameters.resolution"),
        ({"hyperparameters": {"no_such_knob": 1}}, "hyperparameters.no_such_knob"),
        ({"hyperparameters": {"gpus": 0}}, "hyperparameters.gpus"),
        ({"validation": {"every_n_steps": 5}}, "validation.every_n_steps"),
        ({"method": "ppo"}, "method"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_spec_is_422_naming_the_field(
    client: TestClient, headers: dict[str, str], dataset_id: str, overrides: dict[str, Any], param: str
) -> None:
    response = client.post("/v1/jobs", json=job_body(dataset_id, **overrides), headers=headers)
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_request", param)
    assert error["message"]


def test_gpus_is_shown_with_the_job_and_documented(
    client: TestClient, headers: dict[str, str], dataset_id: str
) -> None:
    body = job_body(dataset_id)
    body["hyperparameters"]["gpus"] = 2
    created = client.post("/v1/jobs", json=body, headers=headers).json()
    job = client.get(f"/v1/jobs/{created['id']}", headers=headers).json()
    assert job["hyperparameters"]["gpus"] == 2
    default = client.post("/v1/jobs", json=job_body(dataset_id), headers=headers).json()
    assert default["hyperparameters"]["gpus"] == 1
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    gpus = schemas["Hyperparameters"]["properties"]["gpus"]
    assert gpus["minimum"] == 1 and "data-parallel" in gpus["description"]


def test_unknown_base_model_is_422(client: TestClient, headers: dict[str, str], dataset_id: str) -> None:
    response = client.post("/v1/jobs", json=job_body(dataset_id, base_model="sd-unknown"), headers=headers)
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "base_model"
    assert "tiny-sd" in response.json()["error"]["message"]


def test_unknown_job_is_404_in_the_error_shape(client: TestClient, headers: dict[str, str]) -> None:
    response = client.get("/v1/jobs/job_nope", headers=headers)
    assert response.status_code == 404
    assert response.json() == {
        "error": {"code": "not_found", "message": "job job_nope not found", "param": "job_id"}
    }


def test_missing_or_wrong_key_is_401(client: TestClient) -> None:
    assert client.get("/v1/jobs").json()["error"]["code"] == "unauthenticated"
    response = client.get("/v1/jobs", headers={"Authorization": "Bearer mapo_wrong"})
    assert response.status_code == 401


def test_another_tenants_job_and_dataset_answer_404(
    client: TestClient, session: Session, headers: dict[str, str], dataset_id: str
) -> None:
    job_id = client.post("/v1/jobs", json=job_body(dataset_id), headers=headers).json()["id"]
    stranger = auth_headers(session)
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/events", f"/v1/datasets/{dataset_id}"):
        assert client.get(path, headers=stranger).status_code == 404
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=stranger).status_code == 404
    assert client.get("/v1/jobs", headers=stranger).json() == {"data": [], "has_more": False}
    response = client.post("/v1/jobs", json=job_body(dataset_id), headers=stranger)
    assert (response.status_code, response.json()["error"]["param"]) == (404, "dataset_id")


def test_idempotency_key_replays_the_same_job_and_refuses_a_different_body(
    client: TestClient, headers: dict[str, str], dataset_id: str, settings: Settings
) -> None:
    keyed = {**headers, "Idempotency-Key": "create-1"}
    first = client.post("/v1/jobs", json=job_body(dataset_id), headers=keyed)
    again = client.post("/v1/jobs", json=job_body(dataset_id), headers=keyed)
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
    other = client.post("/v1/jobs", json=job_body(dataset_id, seed=9), headers=keyed)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert len(client.get("/v1/jobs", headers=headers).json()["data"]) == 1
    assert received_task_args(settings) == [[first.json()["id"]]]


def test_cancel_queued_is_immediate_and_idempotent(
    client: TestClient, headers: dict[str, str], dataset_id: str
) -> None:
    job_id = client.post("/v1/jobs", json=job_body(dataset_id), headers=headers).json()["id"]
    for _ in range(2):
        response = client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
        assert response.status_code == 200 and response.json()["status"] == "cancelled"
    types = [e["type"] for e in client.get(f"/v1/jobs/{job_id}/events", headers=headers).json()["data"]]
    assert types == ["queued", "cancel_requested"]


def test_cancel_running_asks_the_worker_and_finished_is_409(
    client: TestClient, session: Session, headers: dict[str, str], tenant_id: str
) -> None:
    running, done = create_job(session, tenant_id=tenant_id), create_job(session, tenant_id=tenant_id)
    for job in (running, done):
        job_repo.claim_job(session, job.id, worker_id="w1")
    job_repo.finish_job(session, done.id, status="succeeded")
    session.commit()
    assert client.post(f"/v1/jobs/{running.id}/cancel", headers=headers).json()["status"] == "cancelling"
    assert client.post(f"/v1/jobs/{running.id}/cancel", headers=headers).json()["status"] == "cancelling"
    response = client.post(f"/v1/jobs/{done.id}/cancel", headers=headers)
    assert response.status_code == 409 and response.json()["error"]["code"] == "job_finished"


def test_list_pages_newest_first_and_filters_by_status(
    client: TestClient, session: Session, headers: dict[str, str], tenant_id: str
) -> None:
    ids = [create_job(session, tenant_id=tenant_id).id for _ in range(3)]
    job_repo.request_cancel(session, ids[1])
    session.commit()
    page = client.get("/v1/jobs?limit=2", headers=headers).json()
    assert [j["id"] for j in page["data"]] == [ids[2], ids[1]] and page["has_more"]
    rest = client.get(f"/v1/jobs?limit=2&after={ids[1]}", headers=headers).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and not rest["has_more"]
    cancelled = client.get("/v1/jobs?status=cancelled", headers=headers).json()["data"]
    assert [j["id"] for j in cancelled] == [ids[1]]
    assert client.get("/v1/jobs?status=bogus", headers=headers).json()["error"]["param"] == "status"


def test_get_shows_progress_metrics_and_error(
    client: TestClient, session: Session, headers: dict[str, str], tenant_id: str
) -> None:
    job = create_job(session, tenant_id=tenant_id)
    job_repo.claim_job(session, job.id, worker_id="w1")
    job_repo.update_progress(
        session, job.id, step=4, total_steps=10, eta_seconds=3.0, latest_metrics={"loss": 0.5}
    )
    job_repo.finish_job(
        session, job.id, status="failed", error_code="non_finite_loss", error_message="loss is nan"
    )
    session.commit()
    body = client.get(f"/v1/jobs/{job.id}", headers=headers).json()
    assert body["progress"] == {"step": 4, "total_steps": 10, "eta_seconds": None}
    assert body["latest_metrics"] == {"loss": 0.5}
    assert body["error"] == {"code": "non_finite_loss", "message": "loss is nan"}
    assert body["started_at"] and body["finished_at"]


def test_events_page_oldest_first(
    client: TestClient, session: Session, headers: dict[str, str], tenant_id: str
) -> None:
    job = create_job(session, tenant_id=tenant_id)
    event_repo.append_events(session, job.id, [event_repo.NewEvent("step", f"s{i}") for i in range(5)])
    session.commit()
    first = client.get(f"/v1/jobs/{job.id}/events?limit=3", headers=headers).json()
    assert [e["id"] for e in first["data"]] == [1, 2, 3] and first["has_more"]
    rest = client.get(f"/v1/jobs/{job.id}/events?after=3", headers=headers).json()
    assert [e["message"] for e in rest["data"]] == ["s3", "s4"] and not rest["has_more"]
    assert set(rest["data"][0]) == {"id", "created_at", "level", "type", "message", "data"}


def read_sse(client: TestClient, path: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    events = []
    with client.stream("GET", path, headers={**headers, "Accept": "text/event-stream"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    return events


def test_sse_streams_live_events_and_closes_when_the_job_finishes(
    client: TestClient, session: Session, database: Database, headers: dict[str, str], tenant_id: str
) -> None:
    job = create_job(session, tenant_id=tenant_id)
    event_repo.append_event(session, job.id, "queued")
    job_repo.claim_job(session, job.id, worker_id="w1")
    session.commit()

    def worker() -> None:
        time.sleep(0.3)
        with database.session_scope() as s:
            event_repo.append_event(s, job.id, "step", data={"step": 1})
        with database.session_scope() as s:
            event_repo.append_event(s, job.id, "succeeded")
            job_repo.finish_job(s, job.id, status="succeeded")

    thread = threading.Thread(target=worker)
    thread.start()
    events = read_sse(client, f"/v1/jobs/{job.id}/events", headers)
    thread.join()
    assert [(e["id"], e["type"]) for e in events] == [(1, "queued"), (2, "step"), (3, "succeeded")]
    replay = read_sse(client, f"/v1/jobs/{job.id}/events", {**headers, "Last-Event-ID": "2"})
    assert [e["id"] for e in replay] == [3]


def test_concurrent_repeats_of_an_idempotent_create_make_one_job(
    client: TestClient, headers: dict[str, str], dataset_id: str, settings: Settings
) -> None:
    keyed = {**headers, "Idempotency-Key": "burst-1"}
    start = threading.Barrier(6)
    answers: list[tuple[int, str]] = []

    def post() -> None:
        start.wait()
        response = client.post("/v1/jobs", json=job_body(dataset_id), headers=keyed)
        answers.append((response.status_code, response.json().get("id", response.text)))

    threads = [threading.Thread(target=post) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {status for status, _ in answers} == {201}, answers
    assert len({job_id for _, job_id in answers}) == 1
    assert len(client.get("/v1/jobs", headers=headers).json()["data"]) == 1
    assert received_task_args(settings) == [[answers[0][1]]]


def test_a_nul_character_in_a_cursor_or_body_is_422_not_500(
    client: TestClient, headers: dict[str, str], dataset_id: str
) -> None:
    # PostgreSQL cannot store or compare NUL in text; SQLite can (then it is simply not found).
    listed = client.get("/v1/jobs", params={"after": "\x00"}, headers=headers)
    assert listed.status_code in (200, 422), listed.text
    created = client.post("/v1/jobs", json=job_body(dataset_id, metadata={"note": "a\x00b"}), headers=headers)
    assert created.status_code in (201, 422), created.text
    for response in (listed, created):
        if response.status_code == 422:
            assert response.json()["error"]["code"] in ("invalid_value", "invalid_request")


def finished_job_with_outputs(session: Session, storage: Storage, tenant_id: str, status: str) -> str:
    """The id of a job that ended in `status` with an event, a metric, a checkpoint, a sample, an adapter
    and a pending webhook delivery, every file stored under the job's key."""
    job = create_job(session, tenant_id=tenant_id, webhooks=[{"url": "https://example.com/hook"}])
    job_repo.claim_job(session, job.id, worker_id="w1")
    job_repo.finish_job(session, job.id, status=status)
    event_repo.append_event(session, job.id, status, f"job {status}")
    metric_repo.add_metrics(session, job.id, [MetricPoint(step=1, name="loss", value=0.5)])
    prefix = job_key(tenant_id, job.id)
    for name in ("checkpoints/step-1/state.pt", "samples/step-1/0-lora.png", "diffusers.safetensors"):
        storage.write_stream(f"{prefix}/{name}", io.BytesIO(b"x"))
    output_repo.add_checkpoint(
        session, job.id, step=1, storage_key=f"{prefix}/checkpoints/step-1", metrics={}
    )
    output_repo.add_sample(
        session, job.id, step=1, index=0, prompt="a fox", with_lora=True, storage_key=f"{prefix}/samples"
    )
    output_repo.add_artifact(
        session,
        job.id,
        format="diffusers",
        storage_key=f"{prefix}/diffusers.safetensors",
        size_bytes=1,
        sha256="",
    )
    webhook_repo.add_delivery(
        session, job_id=job.id, url="https://example.com/hook", event=status, payload="{}"
    )
    session.commit()
    return job.id


def rows_of(session: Session, job_id: str) -> dict[str, int]:
    tables = {"jobs": Job.id, "events": JobEvent.job_id, "metrics": Metric.job_id}
    tables |= {"checkpoints": Checkpoint.job_id, "samples": Sample.job_id, "artifacts": Artifact.job_id}
    tables |= {"deliveries": WebhookDelivery.job_id}
    session.rollback()  # a fresh snapshot: see what the request committed
    return {
        name: session.scalar(select(func.count()).where(column == job_id)) or 0
        for name, column in tables.items()
    }


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_deleting_a_finished_job_removes_its_rows_and_stored_files(
    client: TestClient,
    session: Session,
    storage: Storage,
    headers: dict[str, str],
    tenant_id: str,
    status: str,
) -> None:
    job_id = finished_job_with_outputs(session, storage, tenant_id, status)
    other_id = finished_job_with_outputs(session, storage, tenant_id, status)
    assert set(rows_of(session, job_id).values()) == {1}

    response = client.delete(f"/v1/jobs/{job_id}", headers=headers)

    assert response.status_code == 204, response.text
    assert rows_of(session, job_id) == dict.fromkeys(rows_of(session, job_id), 0)
    assert storage.list_keys(job_key(tenant_id, job_id)) == []
    assert set(rows_of(session, other_id).values()) == {1}  # only that job
    assert len(storage.list_keys(job_key(tenant_id, other_id))) == 3
    assert client.get(f"/v1/jobs/{job_id}", headers=headers).status_code == 404
    assert client.delete(f"/v1/jobs/{job_id}", headers=headers).status_code == 404


def test_a_job_that_has_not_finished_is_409_and_kept(
    client: TestClient, session: Session, headers: dict[str, str], tenant_id: str
) -> None:
    queued, running, cancelling = (create_job(session, tenant_id=tenant_id) for _ in range(3))
    for job in (running, cancelling):
        job_repo.claim_job(session, job.id, worker_id="w1")
    job_repo.request_cancel(session, cancelling.id)
    session.commit()
    for job in (queued, running, cancelling):
        response = client.delete(f"/v1/jobs/{job.id}", headers=headers)
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "job_not_finished"
        assert job_repo.get_status(session, job.id) in ("queued", "running", "cancelling")


def test_another_tenants_job_cannot_be_deleted(
    client: TestClient, session: Session, storage: Storage, headers: dict[str, str]
) -> None:
    owner = create_tenant(session)
    job_id = finished_job_with_outputs(session, storage, owner.id, "succeeded")
    response = client.delete(f"/v1/jobs/{job_id}", headers=headers)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert set(rows_of(session, job_id).values()) == {1}
    assert len(storage.list_keys(job_key(owner.id, job_id))) == 3


def test_openapi_lists_every_job_error_code_with_its_meaning(client: TestClient) -> None:
    from core.job_errors import JOB_ERROR_MEANINGS, JobErrorCode

    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    code = schemas["JobError"]["properties"]["code"]
    assert schemas[code["$ref"].rsplit("/", 1)[1]]["enum"] == [c.value for c in JobErrorCode]
    for listed, meaning in JOB_ERROR_MEANINGS.items():
        assert f"`{listed.value}`: {meaning}" in code["description"]
    statuses = schemas[schemas["JobOut"]["properties"]["status"]["$ref"].rsplit("/", 1)[1]]["enum"]
    assert statuses == ["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]

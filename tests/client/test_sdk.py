"""The SDK against the real app (FastAPI's TestClient injected as its HTTP client) on the test databases."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from client.sdk import ChecksumMismatch, MapoAPIError, MapoClient
from core.models import Job, Tenant
from core.repositories import events as event_repo
from core.repositories import metrics as metric_repo
from core.repositories import outputs as output_repo
from core.repositories.events import NewEvent
from core.repositories.metrics import MetricPoint
from core.settings import Settings
from core.storage import LocalStorage, job_key
from tests.support.factories import create_api_key, create_job, create_tenant
from trainer.synthetic.demo_data import write_demo_upload

BASE_URL = "http://testserver"


@pytest.fixture
def tenant(session: Session) -> Tenant:
    tenant = create_tenant(session)
    session.commit()
    return tenant


@pytest.fixture
def mapo(client: TestClient, session: Session, tenant: Tenant) -> MapoClient:
    _, key = create_api_key(session, tenant)
    session.commit()
    return MapoClient(BASE_URL, key, http=client)


@pytest.fixture
def demo_zip(tmp_path: Path) -> Path:
    return write_demo_upload(tmp_path / "demo.zip", kind="zip", num_pairs=4, resolution=32)


def finished_job(session: Session, tenant: Tenant, status: str = "succeeded") -> Job:
    job = create_job(session, tenant_id=tenant.id, status=status, step=10)
    session.commit()
    return job


def store(settings: Settings, key: str, payload: bytes) -> str:
    return LocalStorage(settings.storage_root).write_stream(key, io.BytesIO(payload)).key


def add_adapter(session: Session, settings: Settings, job: Job, payload: bytes, sha256: str) -> None:
    key = store(settings, f"{job_key(job.tenant_id, job.id)}/diffusers.safetensors", payload)
    output_repo.add_artifact(
        session, job.id, format="diffusers", storage_key=key, size_bytes=len(payload), sha256=sha256
    )
    session.commit()


def test_uploaded_demo_zip_is_ready_listed_and_deletable(mapo: MapoClient, demo_zip: Path) -> None:
    dataset = mapo.upload_dataset(demo_zip, name="warm vs cool")
    assert (dataset["status"], dataset["num_pairs"], dataset["name"]) == ("ready", 4, "warm vs cool")
    assert dataset["sha256"] == hashlib.sha256(demo_zip.read_bytes()).hexdigest()
    assert mapo.get_dataset(dataset["id"])["id"] == dataset["id"]
    assert [d["id"] for d in mapo.list_datasets().data] == [dataset["id"]]

    mapo.delete_dataset(dataset["id"])
    with pytest.raises(MapoAPIError) as gone:
        mapo.get_dataset(dataset["id"])
    assert (gone.value.status, gone.value.code) == (404, "not_found")


def test_rejected_upload_carries_the_problems(mapo: MapoClient, tmp_path: Path) -> None:
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(MapoAPIError) as rejected:
        mapo.upload_dataset(broken)
    assert (rejected.value.status, rejected.value.param) == (422, "file")
    assert rejected.value.body["problems"]


def test_job_is_created_listed_inspected_and_cancelled(mapo: MapoClient, demo_zip: Path) -> None:
    dataset = mapo.upload_dataset(demo_zip)
    job = mapo.create_job(
        dataset_id=dataset["id"],
        base_model="tiny-sd",
        hyperparameters={"max_train_steps": 3},
        validation={"prompts": ["a red circle"]},
        metadata={"run": "sdk-test"},
    )
    assert (job["status"], job["progress"]["total_steps"]) == ("queued", 3)
    assert job["metadata"] == {"run": "sdk-test"}
    assert [j["id"] for j in mapo.list_jobs().data] == [job["id"]]
    assert mapo.list_jobs(status="running").data == []
    assert mapo.get_job(job["id"])["hyperparameters"]["max_train_steps"] == 3

    assert mapo.cancel_job(job["id"])["status"] == "cancelled"
    assert mapo.cancel_job(job["id"])["status"] == "cancelled"  # idempotent
    assert mapo.wait(job["id"], timeout=10)["status"] == "cancelled"


def test_same_idempotency_key_returns_the_same_job(mapo: MapoClient, demo_zip: Path) -> None:
    dataset_id = mapo.upload_dataset(demo_zip)["id"]
    first = mapo.create_job(dataset_id=dataset_id, base_model="tiny-sd", idempotency_key="run-1")
    again = mapo.create_job(dataset_id=dataset_id, base_model="tiny-sd", idempotency_key="run-1")
    assert again["id"] == first["id"]
    assert len(mapo.list_jobs().data) == 1


@pytest.mark.parametrize(
    ("overrides", "status", "code", "param"),
    [
        ({"base_model": "sd-9000"}, 422, "unknown_base_model", "base_model"),
        ({"hyperparameters": {"learning_rate": -1}}, 422, "invalid_request", "hyperparameters.learning_rate"),
        ({"dataset_id": "ds_missing"}, 404, "not_found", "dataset_id"),
    ],
)
def test_bad_job_raises_the_api_error_with_code_and_param(
    mapo: MapoClient, demo_zip: Path, overrides: dict[str, object], status: int, code: str, param: str
) -> None:
    body: dict[str, object] = {"dataset_id": mapo.upload_dataset(demo_zip)["id"], "base_model": "tiny-sd"}
    with pytest.raises(MapoAPIError) as error:
        mapo.create_job(**{**body, **overrides})  # type: ignore[arg-type]
    assert (error.value.status, error.value.code, error.value.param) == (status, code, param)


def test_unknown_job_and_bad_key_raise(client: TestClient, mapo: MapoClient) -> None:
    with pytest.raises(MapoAPIError) as missing:
        mapo.get_job("job_missing")
    assert (missing.value.status, missing.value.code, missing.value.param) == (404, "not_found", "job_id")
    with pytest.raises(MapoAPIError) as denied:
        MapoClient(BASE_URL, "mapo_not-a-key", http=client).list_jobs()
    assert (denied.value.status, denied.value.code) == (401, "unauthenticated")


def test_events_page_and_follow_a_finished_job(mapo: MapoClient, session: Session, tenant: Tenant) -> None:
    job = finished_job(session, tenant)
    event_repo.append_events(session, job.id, [NewEvent("step", f"step {n}") for n in range(1, 6)])
    event_repo.append_event(session, job.id, "succeeded", "job succeeded")
    session.commit()

    first = mapo.events(job.id, limit=2)
    assert ([e["id"] for e in first.data], first.has_more) == ([1, 2], True)
    assert [e["id"] for e in mapo.events(job.id, after=2, limit=10).data] == [3, 4, 5, 6]
    assert [e["id"] for e in mapo.iter_events(job.id, follow=False)] == [1, 2, 3, 4, 5, 6]
    followed = list(mapo.iter_events(job.id, after=4))
    assert [(e["id"], e["type"]) for e in followed] == [(5, "step"), (6, "succeeded")]
    seen: list[int] = []
    assert mapo.wait(job.id, timeout=10, on_event=lambda e: seen.append(e["id"]))["status"] == "succeeded"
    assert seen == [1, 2, 3, 4, 5, 6]


def test_adapter_is_streamed_to_disk_and_checked(
    mapo: MapoClient, session: Session, settings: Settings, tenant: Tenant, tmp_path: Path
) -> None:
    job = finished_job(session, tenant)
    payload = b"lora" * 500_000
    add_adapter(session, settings, job, payload, hashlib.sha256(payload).hexdigest())

    into_dir = mapo.download_adapter(job.id, tmp_path)
    assert into_dir == tmp_path / "pytorch_lora_weights.safetensors"
    assert into_dir.read_bytes() == payload
    as_file = mapo.download_adapter(job.id, tmp_path / "named" / "mine.safetensors")
    assert as_file.read_bytes() == payload
    with pytest.raises(MapoAPIError) as missing:
        mapo.download_adapter(job.id, tmp_path, format="kohya")
    assert (missing.value.status, missing.value.code) == (404, "adapter_not_found")


def test_adapter_with_a_wrong_sha256_is_refused_and_not_kept(
    mapo: MapoClient, session: Session, settings: Settings, tenant: Tenant, tmp_path: Path
) -> None:
    job = finished_job(session, tenant)
    add_adapter(session, settings, job, b"tampered", "0" * 64)
    dest = tmp_path / "adapter"
    dest.mkdir()
    with pytest.raises(ChecksumMismatch):
        mapo.download_adapter(job.id, dest)
    assert list(dest.iterdir()) == []


def test_metrics_checkpoints_and_samples(
    mapo: MapoClient, session: Session, settings: Settings, tenant: Tenant, tmp_path: Path
) -> None:
    job = finished_job(session, tenant)
    metric_repo.add_metrics(session, job.id, [MetricPoint(s, "loss", 1.0 / s) for s in (1, 2)])
    output_repo.add_checkpoint(session, job.id, step=2, storage_key="x/checkpoint-2", metrics={"loss": 0.5})
    key = store(settings, f"{job_key(tenant.id, job.id)}/samples/step-2/0-lora.png", b"\x89PNG fake")
    output_repo.add_sample(session, job.id, step=2, index=0, prompt="a fox", with_lora=True, storage_key=key)
    session.commit()

    assert mapo.metrics(job.id) == {"loss": {"steps": [1, 2], "values": [1.0, 0.5]}}
    assert [c["step"] for c in mapo.checkpoints(job.id)] == [2]
    [sample] = mapo.samples(job.id)
    assert (sample["prompt"], sample["with_lora"]) == ("a fox", True)
    saved = mapo.download_sample(job.id, sample["id"], tmp_path / "fox.png")
    assert saved.read_bytes() == b"\x89PNG fake"


def test_metrics_of_a_long_series_thinned_to_max_points_keep_the_first_and_last_step(
    mapo: MapoClient, session: Session, tenant: Tenant
) -> None:
    job = finished_job(session, tenant)
    metric_repo.add_metrics(session, job.id, [MetricPoint(s, "loss", 1.0 / s) for s in range(1, 101)])
    session.commit()

    thinned = mapo.metrics(job.id, max_points=10)["loss"]["steps"]
    assert 2 <= len(thinned) <= 10
    assert (thinned[0], thinned[-1]) == (1, 100)
    assert len(mapo.metrics(job.id)["loss"]["steps"]) == 100


def test_job_with_webhooks_and_the_signing_secret(mapo: MapoClient, demo_zip: Path) -> None:
    dataset_id = mapo.upload_dataset(demo_zip)["id"]
    hooks = [{"url": "https://example.test/hook", "events": ["started", "succeeded"]}]
    job = mapo.create_job(dataset_id=dataset_id, base_model="tiny-sd", webhooks=hooks)
    assert job["webhooks"] == hooks
    secret = mapo.webhook_secret()["secret"]
    assert secret.startswith("whsec_") and mapo.webhook_secret()["secret"] == secret
    rotated = mapo.rotate_webhook_secret()
    assert rotated["secret"] != secret and rotated["previous_secret_expires_at"] is not None
    assert mapo.webhook_deliveries(job["id"])["data"] == []  # nothing has happened to it yet

"""POST /v1/jobs/estimate: memory, time and cost of a job body per class of the registered workers'
devices, counted from the small SDXL preset's safetensors headers; and POST /v1/jobs refusing a job that
fits none of them (422 does_not_fit) while accepting one that `auto` makes fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from core.repositories import workers as worker_repo
from core.settings import Settings
from tests.support.api_calls import job_body
from tests.support.factories import advertisement
from trainer.plan import device_class, plan, read_base_model, smallest_plan
from trainer.spec import TrainSpec

MiB = 2**20
# Large enough that no GPU of a test's registered workers holds it in bf16.
HEAVY = {"max_train_steps": 100, "resolution": 1024, "train_batch_size": 64}


@pytest.fixture(scope="module")
def small_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small SDXL preset (~25M parameters), whose weights, unlike the tiny one's, move the peak by
    more than the MiB a worker advertises its memory in."""
    from trainer.synthetic.tiny import build_tiny_pipeline

    return build_tiny_pipeline("sdxl", tmp_path_factory.mktemp("small-sdxl"), preset="small")


@pytest.fixture
def settings(settings: Settings, small_sdxl: Path) -> Settings:
    return settings.model_copy(
        update={
            "base_models": {**settings.base_models, "small-sdxl": str(small_sdxl)},
            "gpu_hour_prices": {"H100": 3.0},
        }
    )


def _register(session: Session, settings: Settings, worker_id: str, **fields: Any) -> None:
    worker_repo.register_worker(session, advertisement(worker_id, queues=[settings.default_queue], **fields))
    session.commit()


def _body(dataset_id: str, **hyperparameters: Any) -> dict[str, Any]:
    return job_body(dataset_id, base_model="small-sdxl", hyperparameters={**HEAVY, **hyperparameters})


def _peaks_mb(model: Path) -> tuple[int, int]:
    """The plan's peak of the HEAVY job in bf16 and in its smallest recipe on a GPU, in MiB."""
    spec = TrainSpec(base_model=str(model), mixed_precision="bf16", **HEAVY)
    weights = read_base_model(model)
    gpu = device_class(kind="cuda", gpu_model="NVIDIA L4", memory_bytes=None)
    full = plan(spec, weights, gpu).memory.peak_device
    return full // MiB, smallest_plan(spec, weights, gpu).memory.peak_device // MiB


def test_the_estimate_names_recipe_memory_time_cost_and_the_workers_per_device_class(
    client: TestClient, session: Session, headers: dict[str, str], dataset_id: str, settings: Settings
) -> None:
    _register(session, settings, "gpu1@h1")
    _register(session, settings, "gpu2@h2")
    _register(session, settings, "cpu@h3", device="cpu", gpu_model=None, gpu_memory_mb=None, gpu_count=0)
    body = _body(dataset_id, mixed_precision="bf16", resolution=256, train_batch_size=4)

    response = client.post("/v1/jobs/estimate", json=body, headers=headers)
    assert response.status_code == 200, response.text
    estimate = response.json()
    by_class = {d["device_class"]: d for d in estimate["devices"]}
    h100, cpu = by_class["H100"], by_class["cpu"]
    assert (h100["fits"], h100["workers"], h100["recipe"]["base_precision"]) == (
        True,
        ["gpu1@h1", "gpu2@h2"],
        "bf16",
    )
    assert h100["total_seconds"] == pytest.approx(100 * h100["step_seconds"])
    assert h100["cost"] == pytest.approx(h100["total_seconds"] / 3600 * 3.0, rel=1e-3)
    assert (cpu["fits"], cpu["workers"], cpu["recipe"]["base_precision"], cpu["cost"]) == (
        None,
        ["cpu@h3"],
        "fp32",
        None,
    )
    assert cpu["step_seconds"] > h100["step_seconds"]
    assert sorted(estimate["workers"]) == ["cpu@h3", "gpu1@h1", "gpu2@h2"]
    assert estimate["recipe"] == h100["recipe"]  # the fastest class that can take it
    assert estimate["smallest_recipe"]["base_precision"] == "nf4"
    assert estimate["smallest_memory"]["peak_device_bytes"] < estimate["memory"]["peak_device_bytes"]
    assert client.get("/v1/jobs", headers=headers).json()["data"] == []  # nothing was created


def test_a_stopped_worker_or_one_on_another_queue_is_no_candidate(
    client: TestClient, session: Session, headers: dict[str, str], dataset_id: str, settings: Settings
) -> None:
    _register(session, settings, "gpu1@h1")
    worker_repo.mark_stopped(session, "gpu1@h1")
    worker_repo.register_worker(session, advertisement("gpu2@h2", queues=["elsewhere"]))
    session.commit()
    estimate = client.post("/v1/jobs/estimate", json=_body(dataset_id), headers=headers).json()
    assert (estimate["devices"], estimate["workers"]) == ([], [])


def test_a_job_that_fits_no_registered_worker_is_refused_with_the_estimate_and_the_smallest_recipe(
    client: TestClient,
    session: Session,
    headers: dict[str, str],
    dataset_id: str,
    settings: Settings,
    small_sdxl: Path,
) -> None:
    full_mb, smallest_mb = _peaks_mb(small_sdxl)
    assert smallest_mb < full_mb
    between = (full_mb + smallest_mb) // 2
    _register(session, settings, "l4@h1", gpu_model="NVIDIA A10G", gpu_memory_mb=between)

    body = _body(dataset_id, mixed_precision="bf16")
    response = client.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "does_not_fit"
    assert f"{full_mb / 1024:.1f} GiB" in error["message"]
    assert "base_precision nf4" in error["message"] and "and fits" in error["message"]
    assert client.get("/v1/jobs", headers=headers).json()["data"] == []

    estimate = client.post("/v1/jobs/estimate", json=body, headers=headers).json()
    assert (estimate["devices"][0]["fits"], estimate["workers"]) == (False, [])


def test_auto_makes_the_same_job_fit_and_it_is_accepted(
    client: TestClient,
    session: Session,
    headers: dict[str, str],
    dataset_id: str,
    settings: Settings,
    small_sdxl: Path,
) -> None:
    full_mb, _ = _peaks_mb(small_sdxl)
    _register(session, settings, "a10g@h1", gpu_model="NVIDIA A10G", gpu_memory_mb=full_mb - 1)
    body = _body(dataset_id, mixed_precision="bf16", base_precision="auto")

    estimate = client.post("/v1/jobs/estimate", json=body, headers=headers).json()
    assert estimate["devices"][0]["recipe"]["base_precision"] in ("int8", "nf4")
    assert estimate["workers"] == ["a10g@h1"]
    response = client.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 201, response.text
    assert response.json()["hyperparameters"]["base_precision"] == "auto"  # the worker resolves it


def test_with_no_worker_of_known_memory_a_job_is_accepted_as_before(
    client: TestClient, session: Session, headers: dict[str, str], dataset_id: str, settings: Settings
) -> None:
    assert client.post("/v1/jobs", json=_body(dataset_id), headers=headers).status_code == 201
    _register(session, settings, "cpu@h3", device="cpu", gpu_model=None, gpu_memory_mb=None, gpu_count=0)
    assert client.post("/v1/jobs", json=_body(dataset_id), headers=headers).status_code == 201


def test_a_base_model_without_a_local_folder_has_no_estimate_and_its_jobs_are_accepted(
    client: TestClient, session: Session, headers: dict[str, str], dataset_id: str, settings: Settings
) -> None:
    _register(session, settings, "tiny@h1", gpu_memory_mb=1)  # would fit nothing, were it counted
    response = client.post(
        "/v1/jobs/estimate", json=job_body(dataset_id), headers=headers
    )  # tiny-sd: no folder
    assert (response.status_code, response.json()["error"]["code"]) == (422, "estimate_unavailable")
    assert client.post("/v1/jobs", json=job_body(dataset_id), headers=headers).status_code == 201


def test_the_estimate_route_is_documented(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/jobs/estimate"]["post"]
    assert "creates nothing" in operation["description"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "EstimateOut"
    )

"""GET /v1/workers: the shared worker pool, with what each worker advertises and whether it is alive."""

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from core.models import utcnow
from core.repositories import workers as worker_repo
from tests.support.factories import advertisement, auth_headers


def test_workers_are_listed_with_their_gpus_and_whether_they_are_alive(
    client: TestClient, session: Session
) -> None:
    long_ago = utcnow() - timedelta(hours=1)
    worker_repo.register_worker(session, advertisement("gpu1@h1"))
    worker_repo.register_worker(session, advertisement("gpu2@h2", last_seen_at=long_ago))
    worker_repo.register_worker(session, advertisement("cpu@h3", device="cpu", gpu_model=None, gpu_count=0))
    worker_repo.mark_stopped(session, "cpu@h3")
    headers = auth_headers(session)

    response = client.get("/v1/workers", headers=headers)
    assert response.status_code == 200, response.text
    rows = {w["id"]: w for w in response.json()["data"]}
    assert {w: rows[w]["status"] for w in rows} == {
        "gpu1@h1": "online",
        "gpu2@h2": "offline",
        "cpu@h3": "stopped",
    }
    gpu1 = rows["gpu1@h1"]
    assert (gpu1["device"], gpu1["gpu_model"], gpu1["gpu_memory_mb"], gpu1["gpu_count"]) == (
        "cuda",
        "NVIDIA H100 80GB HBM3",
        81559,
        8,
    )
    assert gpu1["queues"] == ["mapo.gpu.h100"]
    online = client.get("/v1/workers", params={"status": "online"}, headers=headers).json()["data"]
    assert [w["id"] for w in online] == ["gpu1@h1"]


def test_workers_need_an_api_key(client: TestClient) -> None:
    assert client.get("/v1/workers").status_code == 401

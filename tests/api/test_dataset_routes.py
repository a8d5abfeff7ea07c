import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.orm import Session

from api.main import create_app
from core.db import Database
from core.models import Dataset, Job
from core.settings import Settings
from core.storage import Storage
from tests.support.api_calls import upload
from tests.support.archives import pairs_zip, png
from tests.support.factories import auth_headers
from tests.support.io_counters import written_bytes
from tests.support.storage_backends import BOTH_STORAGE_BACKENDS

pytestmark = BOTH_STORAGE_BACKENDS


def stored_manifests(storage: Storage) -> list[str]:
    return [key for key in storage.list_keys("tenants") if key.endswith("/manifest.json")]


@pytest.fixture
def headers(session: Session) -> dict[str, str]:
    return auth_headers(session)


def test_upload_stores_a_ready_dataset_and_serves_its_images(
    client: TestClient, headers: dict[str, str]
) -> None:
    payload = pairs_zip()
    dataset = upload(client, headers, payload)
    assert (dataset["http_status"], dataset["status"]) == (201, "ready"), dataset
    assert (dataset["name"], dataset["num_pairs"], dataset["bytes"]) == ("demo", 2, len(payload))
    assert dataset["sha256"] == hashlib.sha256(payload).hexdigest()
    assert [p["prompt"] for p in dataset["preview"]] == ["a red square", "a blue circle"]

    image = client.get(dataset["preview"][1]["chosen_url"], headers=headers)
    assert image.status_code == 200
    assert Image.open(io.BytesIO(image.content)).getpixel((0, 0)) == (0, 0, 200)
    assert client.get(f"/v1/datasets/{dataset['id']}", headers=headers).json()["num_pairs"] == 2
    missing = client.get(f"/v1/datasets/{dataset['id']}/pairs/2/chosen", headers=headers)
    assert (missing.status_code, missing.json()["error"]["param"]) == (404, "n")


def test_rejected_upload_lists_problems_and_leaves_nothing_behind(
    client: TestClient, headers: dict[str, str], settings: Settings, storage: Storage
) -> None:
    response = upload(client, headers, pairs_zip(missing_rejected=True))
    assert response["http_status"] == 422
    error = response["error"]
    assert (error["code"], error["param"]) == ("dataset_rejected", "file")
    assert any(p["row"] == 1 and p["field"] == "rejected" for p in error["problems"])
    assert client.get("/v1/datasets", headers=headers).json()["data"] == []
    assert [p for p in settings.tmp_dir.rglob("*") if p.is_file()] == []
    assert storage.list_keys("tenants") == []


def test_upload_over_the_size_limit_is_413(settings: Settings, database: Database, session: Session) -> None:
    small = settings.model_copy(update={"max_upload_bytes": 100})
    with TestClient(create_app(small)) as client:
        headers = auth_headers(session)
        response = upload(client, headers, pairs_zip())
        # Far over the limit, the body is cut off before the route runs, with the same error shape.
        huge = upload(client, headers, b"x" * (3 << 20))
    assert response["http_status"] == 413
    assert response["error"]["code"] == "payload_too_large"
    assert (huge["http_status"], huge["error"]["code"]) == (413, "payload_too_large")
    assert [p for p in small.tmp_dir.rglob("*") if p.is_file()] == []


def test_an_upload_is_written_once_into_the_data_directory_and_never_to_the_system_temp_dir(
    client: TestClient,
    headers: dict[str, str],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # The system temp dir does not exist: any byte spooled there (Starlette spools a multipart body
    # over 1 MiB to it) fails the upload.
    system_tmp = tmp_path / "system-tmp"
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    payload = pairs_zip(noise=os.urandom(4 << 20))
    before = written_bytes()
    dataset = upload(client, headers, payload)
    written = written_bytes() - before

    assert (dataset["http_status"], dataset["bytes"]) == (201, len(payload)), dataset
    assert not system_tmp.exists()
    # Once into the data directory's tmp; the unreferenced noise is never extracted, nothing is copied.
    assert written < 1.5 * len(payload), f"{written} bytes written for an upload of {len(payload)}"
    assert [p for p in settings.tmp_dir.rglob("*") if p.is_file()] == []


def test_upload_form_fields_are_checked_like_the_schema_says(
    client: TestClient, headers: dict[str, str]
) -> None:
    long_name = upload(client, headers, pairs_zip(), name="n" * 201)
    bad_kind = client.post(
        "/v1/datasets", files={"file": ("p.zip", pairs_zip())}, data={"kind": "both"}, headers=headers
    )
    no_file = client.post("/v1/datasets", data={"name": "x"}, headers=headers)
    not_multipart = client.post("/v1/datasets", json={"file": "x"}, headers=headers)
    truncated = client.post(
        "/v1/datasets",
        content=b'--b\r\nContent-Disposition: form-data; name="file"; filename="p.zip"\r\n\r\nPK',
        headers={**headers, "Content-Type": "multipart/form-data; boundary=b"},
    )

    assert (long_name["http_status"], long_name["error"]["param"]) == (422, "name")
    assert (bad_kind.status_code, bad_kind.json()["error"]["param"]) == (422, "kind")
    assert (no_file.status_code, no_file.json()["error"]["param"]) == (422, "file")
    assert (not_multipart.status_code, not_multipart.json()["error"]["param"]) == (422, "file")
    assert (truncated.status_code, truncated.json()["error"]["param"]) == (422, "file")
    assert client.get("/v1/datasets", headers=headers).json()["data"] == []


def test_a_chunked_upload_over_the_limit_is_cut_off_with_413(
    settings: Settings, database: Database, session: Session
) -> None:
    small = settings.model_copy(update={"max_upload_bytes": 100_000})
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="p.zip"\r\n\r\n'

    def body() -> Iterator[bytes]:  # no Content-Length: the limit is only met while reading
        yield head
        for _ in range(50):
            yield os.urandom(64 << 10)
        yield b"\r\n--b--\r\n"

    with TestClient(create_app(small)) as client:
        response = client.post(
            "/v1/datasets",
            content=body(),
            headers={**auth_headers(session), "Content-Type": "multipart/form-data; boundary=b"},
        )
    assert (response.status_code, response.json()["error"]["code"]) == (413, "payload_too_large")
    assert [p for p in small.tmp_dir.rglob("*") if p.is_file()] == []


def test_delete_is_refused_while_a_job_uses_the_dataset(
    client: TestClient, session: Session, headers: dict[str, str], storage: Storage
) -> None:
    dataset = upload(client, headers, pairs_zip())
    key = session.get_one(Dataset, dataset["id"]).storage_key
    assert storage.exists(f"{key}/manifest.json")
    body = {"dataset_id": dataset["id"], "base_model": "tiny-sd"}
    job_id = client.post("/v1/jobs", json=body, headers=headers).json()["id"]

    refused = client.delete(f"/v1/datasets/{dataset['id']}", headers=headers)
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "dataset_in_use")
    client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
    assert client.delete(f"/v1/datasets/{dataset['id']}", headers=headers).status_code == 204

    assert client.get(f"/v1/datasets/{dataset['id']}", headers=headers).status_code == 404
    assert not storage.exists(key)
    assert session.get_one(Job, job_id).dataset_id is None


def test_datasets_list_newest_first_and_are_private(
    client: TestClient, session: Session, headers: dict[str, str]
) -> None:
    ids = [upload(client, headers, pairs_zip(), name=None)["id"] for _ in range(3)]
    page = client.get("/v1/datasets?limit=2", headers=headers).json()
    assert [d["id"] for d in page["data"]] == ids[::-1][:2] and page["has_more"]
    assert page["data"][0]["name"] == "pairs.zip"
    stranger = auth_headers(session)
    assert client.get("/v1/datasets", headers=stranger).json()["data"] == []
    assert client.delete(f"/v1/datasets/{ids[0]}", headers=stranger).status_code == 404
    assert client.get(f"/v1/datasets/{ids[0]}/pairs/0/chosen", headers=stranger).status_code == 404


def numbered_pairs_zip(count: int) -> bytes:
    """`count` pairs whose prompts are `prompt 0`, `prompt 1`, ..."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        rows = [
            {"prompt": f"prompt {i}", "chosen": f"{i}c.png", "rejected": f"{i}r.png"} for i in range(count)
        ]
        archive.writestr("pairs.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        for i in range(count):
            archive.writestr(f"{i}c.png", png((200, i, 0)))
            archive.writestr(f"{i}r.png", png((0, i, 200)))
    return out.getvalue()


def test_pairs_page_through_every_prompt_with_their_image_urls(
    client: TestClient, session: Session, headers: dict[str, str]
) -> None:
    dataset_id = upload(client, headers, numbered_pairs_zip(5))["id"]
    first = client.get(f"/v1/datasets/{dataset_id}/pairs?limit=2", headers=headers).json()
    assert [(p["index"], p["prompt"]) for p in first["data"]] == [(0, "prompt 0"), (1, "prompt 1")]
    assert first["has_more"]
    rest = client.get(f"/v1/datasets/{dataset_id}/pairs?after=1&limit=10", headers=headers).json()
    assert [p["index"] for p in rest["data"]] == [2, 3, 4] and not rest["has_more"]
    rejected = client.get(rest["data"][0]["rejected_url"], headers=headers)
    assert Image.open(io.BytesIO(rejected.content)).getpixel((0, 0)) == (0, 2, 200)
    assert client.get(f"/v1/datasets/{dataset_id}/pairs?after=4", headers=headers).json() == {
        "data": [],
        "has_more": False,
    }
    bad = client.get(f"/v1/datasets/{dataset_id}/pairs?after=-1", headers=headers)
    assert (bad.status_code, bad.json()["error"]["param"]) == (422, "after")
    stranger = auth_headers(session)
    assert client.get(f"/v1/datasets/{dataset_id}/pairs", headers=stranger).status_code == 404


def test_idempotency_key_replays_an_upload_and_refuses_a_different_one(
    client: TestClient, headers: dict[str, str], settings: Settings, storage: Storage
) -> None:
    keyed = {**headers, "Idempotency-Key": "upload-1"}
    first = upload(client, keyed, pairs_zip())
    again = upload(client, keyed, pairs_zip())
    assert (first["http_status"], again["http_status"]) == (201, 201)
    assert again["id"] == first["id"]
    other = upload(client, keyed, pairs_zip(missing_rejected=True))
    assert (other["http_status"], other["error"]["code"]) == (409, "idempotency_key_reused")
    assert other["error"]["param"] == "Idempotency-Key"
    renamed = upload(client, keyed, pairs_zip(), name="another name")
    assert renamed["http_status"] == 409, "the name is part of the request"
    assert [d["id"] for d in client.get("/v1/datasets", headers=headers).json()["data"]] == [first["id"]]
    assert len(stored_manifests(storage)) == 1, "a replay stores nothing more"
    assert [p for p in settings.tmp_dir.rglob("*") if p.is_file()] == []


def test_concurrent_repeats_of_an_idempotent_upload_store_one_dataset(
    client: TestClient, headers: dict[str, str], storage: Storage
) -> None:
    import threading

    keyed = {**headers, "Idempotency-Key": "burst-upload"}
    start = threading.Barrier(4)
    answers: list[dict] = []

    def post() -> None:
        start.wait()
        answers.append(upload(client, keyed, pairs_zip()))

    threads = [threading.Thread(target=post) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {a["http_status"] for a in answers} == {201}, answers
    assert len({a["id"] for a in answers}) == 1
    assert len(client.get("/v1/datasets", headers=headers).json()["data"]) == 1
    assert len(stored_manifests(storage)) == 1, "the losers' files are gone"


def test_reading_and_listing_datasets_opens_nothing_in_storage(
    client: TestClient, headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    keyed = {**headers, "Idempotency-Key": "read-nothing"}
    dataset = upload(client, keyed, pairs_zip())
    storage = client.app.state.context.storage  # type: ignore[attr-defined]
    reads: list[str] = []
    open_read = storage.open_read

    def counted_open_read(key: str) -> object:
        reads.append(key)
        return open_read(key)

    monkeypatch.setattr(storage, "open_read", counted_open_read)
    listed = client.get("/v1/datasets", headers=headers).json()["data"]
    one = client.get(f"/v1/datasets/{dataset['id']}", headers=headers).json()
    replayed = upload(client, keyed, pairs_zip())
    assert [d["kind"] for d in listed] == ["pairs"]
    assert (one["kind"], replayed["kind"], replayed["id"]) == ("pairs", "pairs", dataset["id"])
    assert reads == [], "the kind is the row's: no manifest is opened"


def test_openapi_states_that_a_recorded_dataset_is_always_ready(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    status = schemas["DatasetOut"]["properties"]["status"]
    assert status.get("const") == "ready", status

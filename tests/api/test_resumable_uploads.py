"""Resumable uploads over tus 1.0 (/v1/uploads): parts, offsets, resuming, limits, tenancy, and the step
that makes a complete upload a dataset through the one-shot upload's checks."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.main import create_app
from api.services.uploads import LOCK_FILE, UploadStore
from client.sdk import MapoClient
from core.settings import Settings
from tests.support.archives import pairs_zip
from tests.support.factories import auth_headers
from tests.support.tus import TUS, create, offset, patch


@pytest.fixture
def headers(session: Session) -> dict[str, str]:
    return auth_headers(session)


def test_discovery_names_the_version_extensions_and_the_largest_upload(
    client: TestClient, settings: Settings, headers: dict[str, str]
) -> None:
    response = client.options("/v1/uploads", headers=headers)
    assert response.status_code == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    assert set(response.headers["Tus-Extension"].split(",")) == {"creation", "expiration", "termination"}
    assert response.headers["Tus-Max-Size"] == str(settings.max_upload_bytes)


def test_an_upload_sent_in_parts_becomes_the_dataset_a_one_shot_upload_would(
    client: TestClient, headers: dict[str, str]
) -> None:
    archive = pairs_zip()
    upload_id = create(client, headers, len(archive))
    cut = len(archive) // 3
    assert patch(client, headers, upload_id, 0, archive[:cut]).headers["Upload-Offset"] == str(cut)
    assert offset(client, headers, upload_id) == cut
    done = patch(client, headers, upload_id, cut, archive[cut:])
    assert done.status_code == 204 and done.headers["Upload-Offset"] == str(len(archive))

    made = client.post(f"/v1/uploads/{upload_id}/dataset", json={"name": "in parts"}, headers=headers)
    assert made.status_code == 201, made.text
    dataset = made.json()
    assert (dataset["name"], dataset["num_pairs"], dataset["kind"]) == ("in parts", 2, "pairs")
    assert dataset["sha256"] == hashlib.sha256(archive).hexdigest()
    assert dataset["bytes"] == len(archive)
    assert client.get(f"/v1/datasets/{dataset['id']}", headers=headers).status_code == 200
    # Asked again (its answer lost, say): the same dataset, not a second one.
    again = client.post(f"/v1/uploads/{upload_id}/dataset", json={"name": "in parts"}, headers=headers)
    assert again.status_code == 201 and again.json()["id"] == dataset["id"]
    assert len(client.get("/v1/datasets", headers=headers).json()["data"]) == 1
    state = client.get(f"/v1/uploads/{upload_id}", headers=headers).json()
    assert (state["dataset_id"], state["offset"], state["filename"]) == (
        dataset["id"],
        len(archive),
        "pairs.zip",
    )


def test_a_part_at_the_wrong_offset_is_refused_and_changes_nothing(
    client: TestClient, headers: dict[str, str]
) -> None:
    upload_id = create(client, headers, 100)
    assert patch(client, headers, upload_id, 0, b"a" * 10).status_code == 204
    for wrong in (0, 5, 11, 2**63 - 1):
        refused = patch(client, headers, upload_id, wrong, b"b" * 10)
        assert refused.status_code == 409, wrong
        assert refused.json()["error"]["code"] == "upload_offset_mismatch"
    assert offset(client, headers, upload_id) == 10


def test_bytes_past_the_declared_length_are_refused(client: TestClient, headers: dict[str, str]) -> None:
    upload_id = create(client, headers, 8)
    refused = patch(client, headers, upload_id, 0, b"x" * 12)
    assert refused.status_code == 413
    assert offset(client, headers, upload_id) == 8  # what fitted is kept; nothing past it
    assert patch(client, headers, upload_id, 8, b"y").status_code == 413


def test_protocol_errors_name_the_header(client: TestClient, headers: dict[str, str]) -> None:
    upload_id = create(client, headers, 10)
    no_version = client.head(f"/v1/uploads/{upload_id}", headers=headers)
    assert no_version.status_code == 412
    wrong_type = client.patch(
        f"/v1/uploads/{upload_id}", content=b"x", headers={**headers, **TUS, "Upload-Offset": "0"}
    )
    assert wrong_type.status_code == 415 and wrong_type.json()["error"]["param"] == "Content-Type"
    for length in ("-1", "abc", "1e3", ""):
        bad = client.post("/v1/uploads", headers={**headers, **TUS, "Upload-Length": length})
        assert bad.status_code == 422, length
        assert bad.json()["error"]["param"] == "upload-length"
    bad_meta = client.post(
        "/v1/uploads", headers={**headers, **TUS, "Upload-Length": "1", "Upload-Metadata": "filename ***"}
    )
    assert bad_meta.status_code == 422 and bad_meta.json()["error"]["param"] == "Upload-Metadata"


def test_an_upload_larger_than_the_limit_is_refused_before_a_byte_is_sent(
    client: TestClient, headers: dict[str, str], settings: Settings
) -> None:
    for length in (settings.max_upload_bytes + 1, 2**63 - 1):
        response = client.post("/v1/uploads", headers={**headers, **TUS, "Upload-Length": str(length)})
        assert response.status_code == 413, length
    assert (
        client.post("/v1/uploads", headers={**headers, **TUS, "Upload-Length": str(2**64)}).status_code == 422
    )


def test_another_tenant_sees_no_upload(client: TestClient, session: Session, headers: dict[str, str]) -> None:
    upload_id = create(client, headers, 4)
    other = auth_headers(session)
    assert client.head(f"/v1/uploads/{upload_id}", headers={**other, **TUS}).status_code == 404
    assert patch(client, other, upload_id, 0, b"abcd").status_code == 404
    assert client.post(f"/v1/uploads/{upload_id}/dataset", json={}, headers=other).status_code == 404
    assert client.delete(f"/v1/uploads/{upload_id}", headers={**other, **TUS}).status_code == 404
    assert offset(client, headers, upload_id) == 0
    for hostile in ("..", "up_../../x", "up_" + "a" * 200, "%2e%2e"):
        assert client.head(f"/v1/uploads/{hostile}", headers={**headers, **TUS}).status_code == 404


def test_an_incomplete_upload_is_not_a_dataset_yet(client: TestClient, headers: dict[str, str]) -> None:
    upload_id = create(client, headers, 10)
    patch(client, headers, upload_id, 0, b"12345")
    response = client.post(f"/v1/uploads/{upload_id}/dataset", json={}, headers=headers)
    assert response.status_code == 409 and response.json()["error"]["code"] == "upload_incomplete"


def test_a_complete_upload_that_is_not_a_dataset_gets_the_one_shot_upload_s_422(
    client: TestClient, headers: dict[str, str]
) -> None:
    archive = pairs_zip(missing_rejected=True)
    upload_id = create(client, headers, len(archive))
    patch(client, headers, upload_id, 0, archive)
    unknown_field = client.post(f"/v1/uploads/{upload_id}/dataset", json={"colour": "red"}, headers=headers)
    assert unknown_field.status_code == 422
    bad_kind = client.post(f"/v1/uploads/{upload_id}/dataset", json={"kind": "pears"}, headers=headers)
    assert bad_kind.status_code == 422 and bad_kind.json()["error"]["param"] == "kind"
    refused = client.post(f"/v1/uploads/{upload_id}/dataset", json={"kind": "pairs"}, headers=headers)
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "dataset_rejected"
    assert refused.json()["error"]["problems"]
    assert client.get("/v1/datasets", headers=headers).json()["data"] == []
    # Refused, it can never be a dataset: it is gone, bytes and all (tests/api/test_upload_reservations.py).
    assert client.head(f"/v1/uploads/{upload_id}", headers={**headers, **TUS}).status_code == 404


def test_a_part_is_refused_while_another_request_writes_the_upload(
    client: TestClient, headers: dict[str, str], settings: Settings
) -> None:
    upload_id = create(client, headers, 10)
    (lock_path,) = (settings.tmp_dir / "uploads").glob(f"*/{upload_id}/{LOCK_FILE}")
    fd = os.open(lock_path, os.O_WRONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        busy = patch(client, headers, upload_id, 0, b"12345")
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "upload_busy"
    finally:
        os.close(fd)
    assert patch(client, headers, upload_id, 0, b"12345").status_code == 204


@pytest.fixture
def limited(settings: Settings) -> Iterator[tuple[TestClient, Settings]]:
    limited = settings.model_copy(update={"max_open_uploads": 2, "upload_expiry_seconds": 60})
    with TestClient(create_app(limited)) as client:
        yield client, limited


def test_a_tenant_s_open_uploads_are_capped_and_finishing_one_frees_a_place(
    limited: tuple[TestClient, Settings], headers: dict[str, str]
) -> None:
    client, _ = limited
    archive = pairs_zip()
    first = create(client, headers, len(archive))
    create(client, headers, 10)
    third = client.post("/v1/uploads", headers={**headers, **TUS, "Upload-Length": "10"})
    assert third.status_code == 429 and third.json()["error"]["code"] == "too_many_open_uploads"
    patch(client, headers, first, 0, archive)
    assert client.post(f"/v1/uploads/{first}/dataset", json={}, headers=headers).status_code == 201
    create(client, headers, 10)


def test_an_untouched_upload_expires(limited: tuple[TestClient, Settings], headers: dict[str, str]) -> None:
    client, settings = limited
    stale, fresh = create(client, headers, 10), create(client, headers, 10)
    patch(client, headers, stale, 0, b"12345")
    long_ago = time.time() - settings.upload_expiry_seconds - 1
    for path in (settings.tmp_dir / "uploads").glob(f"*/{stale}/*"):
        os.utime(path, (long_ago, long_ago))
    assert UploadStore(settings).expire() == [stale]
    assert client.head(f"/v1/uploads/{stale}", headers={**headers, **TUS}).status_code == 404
    assert offset(client, headers, fresh) == 0


def test_uploads_that_would_fill_the_disk_are_refused(settings: Settings, headers: dict[str, str]) -> None:
    settings.ensure_dirs()
    free = shutil.disk_usage(settings.data_dir).free
    unlimited = {"max_upload_bytes": 2**62, "max_reserved_upload_bytes": 2**62}
    tight = settings.model_copy(update={"min_free_disk_bytes": free // 2, **unlimited})
    with TestClient(create_app(tight)) as client:
        # Each fits alone; the second would leave less than the margin beside the first's promise.
        create(client, headers, free // 3)
        refused = client.post("/v1/uploads", headers={**headers, **TUS, "Upload-Length": str(free // 3)})
        assert refused.status_code == 507 and refused.json()["error"]["code"] == "insufficient_storage"


def test_the_sdk_uploads_in_parts_and_resumes_an_upload_a_crash_cut_short(
    client: TestClient, headers: dict[str, str], tmp_path: Path
) -> None:
    archive = tmp_path / "pairs.zip"
    archive.write_bytes(pairs_zip())
    key = headers["Authorization"].removeprefix("Bearer ")
    mapo = MapoClient(str(client.base_url), key, http=client)
    state_file = tmp_path / "state.json"
    sent: list[int] = []

    def crash_after_first_part(held: int, total: int) -> None:
        sent.append(held)
        if len(sent) == 2:
            raise KeyboardInterrupt  # the user's Ctrl-C, or a kill, after one part arrived

    with pytest.raises(KeyboardInterrupt):
        mapo.upload_dataset_resumable(
            archive, part_bytes=500, on_progress=crash_after_first_part, state_file=state_file
        )
    assert sent == [0, 500]

    resumed: list[int] = []
    dataset = mapo.upload_dataset_resumable(
        archive,
        name="resumed",
        part_bytes=500,
        on_progress=lambda held, _: resumed.append(held),
        state_file=state_file,
    )
    assert resumed[0] == 500, "the second run starts where the first left off"
    assert resumed[-1] == archive.stat().st_size
    assert dataset["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert dataset["name"] == "resumed"
    assert state_file.read_text().strip() == "{}"

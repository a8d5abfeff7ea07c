"""The disk fills up under an upload: every write path answers 507 insufficient_storage (never a 500 or a
reset connection), nothing half-written stays, the upload resumes once there is room, and /readyz reports
the disk. On a real, small filesystem (tmpfs) filled for real."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.main import create_app
from core.settings import Settings
from tests.support.archives import pairs_zip
from tests.support.disks import fill
from tests.support.factories import auth_headers
from tests.support.tus import create, offset, patch

BOUNDARY = "xyz"


def form_body(archive: bytes) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="pairs.zip"\r\n\r\n'.encode()
        + archive
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_part_that_meets_a_full_disk_is_507_keeps_what_fit_and_resumes_once_there_is_room(
    settings: Settings, database: object, session: Session, mount_small_disk: Callable[[Path], None]
) -> None:
    mount_small_disk(settings.data_dir)
    headers = auth_headers(session)
    archive = pairs_zip(noise=os.urandom(512 << 10))  # incompressible, so it cannot fit a full disk
    # No margin: the writes themselves must meet the full disk, not the reservation check before them.
    with TestClient(create_app(settings.model_copy(update={"min_free_disk_bytes": 0}))) as client:
        upload_id = create(client, headers, len(archive))
        filler = fill(settings.data_dir)

        part = patch(client, headers, upload_id, 0, archive)
        assert part.status_code == 507 and part.json()["error"]["code"] == "insufficient_storage"
        assert files_under(settings.tmp_dir / "inflight") == []
        assert files_under(settings.storage_root) == []
        assert client.get("/v1/datasets", headers=headers).json()["data"] == []

        filler.unlink()
        held = offset(client, headers, upload_id)
        assert patch(client, headers, upload_id, held, archive[held:]).status_code == 204
        assert client.post(f"/v1/uploads/{upload_id}/dataset", json={}, headers=headers).status_code == 201


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_one_shot_upload_that_meets_a_full_disk_is_507_and_leaves_nothing(
    settings: Settings, database: object, session: Session, mount_small_disk: Callable[[Path], None]
) -> None:
    mount_small_disk(settings.data_dir)
    headers = auth_headers(session)
    archive = pairs_zip(noise=os.urandom(512 << 10))
    with TestClient(create_app(settings.model_copy(update={"min_free_disk_bytes": 0}))) as client:
        fill(settings.data_dir)
        # A chunked body declares no size, so only the write finds the disk full.
        one_shot = client.post(
            "/v1/datasets",
            headers={**headers, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
            content=iter([form_body(archive)]),
        )
        assert one_shot.status_code == 507, one_shot.text
        assert one_shot.json()["error"] == {
            "code": "insufficient_storage",
            "message": "the server's disk is full; retry later",
            "param": None,
        }
        assert files_under(settings.tmp_dir / "inflight") == []
        assert files_under(settings.storage_root) == []
        assert client.get("/v1/datasets", headers=headers).json()["data"] == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_readyz_reports_a_disk_below_its_free_margin(
    settings: Settings, database: object, mount_small_disk: Callable[[Path], None]
) -> None:
    mount_small_disk(settings.data_dir)
    filler = fill(settings.data_dir)
    with TestClient(create_app(settings.model_copy(update={"min_free_disk_bytes": 1 << 20}))) as client:
        full = client.get("/readyz")
        assert full.status_code == 503 and full.json()["error"]["param"] == "disk", full.text
        filler.unlink()
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["disk"] == "ok", ready.text

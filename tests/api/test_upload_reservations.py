"""What a resumable upload may hold of the disk and of its tenant's places: a refused one frees both at
once, one tenant's reservations are capped, one that sends nothing expires soon (and an expired one is
gone at once), a one-shot upload respects the others' reservations, and a 507 tells no host figures."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.main import create_app
from core.settings import Settings
from tests.support.archives import pairs_zip
from tests.support.factories import auth_headers
from tests.support.served_app import read_response, send_head, served
from tests.support.tus import TUS, create, patch


@pytest.fixture
def headers(session: Session) -> dict[str, str]:
    return auth_headers(session)


def client_of(settings: Settings, **overrides: object) -> TestClient:
    return TestClient(create_app(settings.model_copy(update=overrides)))


@pytest.fixture
def one_place(settings: Settings) -> Iterator[TestClient]:
    with client_of(settings, max_open_uploads=1) as client:
        yield client


def test_a_refused_upload_frees_its_bytes_and_its_tenant_s_place_at_once(
    one_place: TestClient, headers: dict[str, str], settings: Settings
) -> None:
    archive = pairs_zip(missing_rejected=True)
    refused_id = create(one_place, headers, len(archive))
    patch(one_place, headers, refused_id, 0, archive)
    refused = one_place.post(f"/v1/uploads/{refused_id}/dataset", json={}, headers=headers)
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "dataset_rejected"

    assert one_place.head(f"/v1/uploads/{refused_id}", headers={**headers, **TUS}).status_code == 404
    assert not list((settings.tmp_dir / "uploads").glob(f"*/{refused_id}"))
    create(one_place, headers, 10)  # the tenant's one place is free again


def test_a_refused_field_leaves_the_upload_to_be_tried_again(
    client: TestClient, headers: dict[str, str]
) -> None:
    archive = pairs_zip()
    upload_id = create(client, headers, len(archive))
    patch(client, headers, upload_id, 0, archive)
    bad_kind = client.post(f"/v1/uploads/{upload_id}/dataset", json={"kind": "pears"}, headers=headers)
    assert bad_kind.status_code == 422
    assert client.post(f"/v1/uploads/{upload_id}/dataset", json={}, headers=headers).status_code == 201


def test_one_tenant_s_reservations_are_capped_and_another_tenant_still_uploads(
    settings: Settings, session: Session
) -> None:
    first, second = auth_headers(session), auth_headers(session)
    with client_of(settings, max_reserved_upload_bytes=1000) as client:
        create(client, first, 800)
        over = client.post("/v1/uploads", headers={**first, **TUS, "Upload-Length": "300"})
        assert over.status_code == 507 and over.json()["error"]["code"] == "insufficient_storage"
        create(client, second, 800)


def test_an_upload_that_receives_nothing_expires_soon_and_is_gone_at_once(
    settings: Settings, headers: dict[str, str]
) -> None:
    with client_of(settings, upload_start_expiry_seconds=60) as client:
        silent, started = create(client, headers, 10), create(client, headers, 10)
        patch(client, headers, started, 0, b"12345")
        a_while_ago = time.time() - 61  # past the start expiry, far within the day of the other
        for path in (settings.tmp_dir / "uploads").glob("*/*/*"):
            os.utime(path, (a_while_ago, a_while_ago))
        # No sweep has run: the expired upload is gone all the same.
        assert client.head(f"/v1/uploads/{silent}", headers={**headers, **TUS}).status_code == 404
        assert client.get(f"/v1/uploads/{silent}", headers=headers).status_code == 404
        assert client.head(f"/v1/uploads/{started}", headers={**headers, **TUS}).status_code == 200


def test_a_507_tells_the_tenant_no_figure_of_the_host_s(settings: Settings, headers: dict[str, str]) -> None:
    settings.ensure_dirs()
    free = shutil.disk_usage(settings.data_dir).free
    unlimited = {"max_upload_bytes": 2**62, "max_reserved_upload_bytes": 2**62}
    with client_of(settings, min_free_disk_bytes=free // 2, **unlimited) as client:
        length = free  # can never fit
        refused = client.post("/v1/uploads", headers={**headers, **TUS, "Upload-Length": str(length)})
    assert refused.status_code == 507, refused.text
    assert re.findall(r"\d+", refused.json()["error"]["message"]) == [str(length)]


def test_a_one_shot_upload_respects_the_disk_promised_to_open_uploads(
    settings: Settings, session: Session
) -> None:
    settings.ensure_dirs()
    free = shutil.disk_usage(settings.data_dir).free
    tight = settings.model_copy(
        update={
            "min_free_disk_bytes": free // 2,
            "max_upload_bytes": 2**62,
            "max_reserved_upload_bytes": 2**62,
        }
    )
    first, second = auth_headers(session), auth_headers(session)
    app = create_app(tight)
    with TestClient(app) as client:
        create(client, first, free // 3)  # fits, and leaves a sixth of the disk above the margin
    with served(app) as port:
        # Declares a third of the disk, which would fit alone but not beside the reservation.
        head = {
            **second,
            "Content-Type": "multipart/form-data; boundary=xyz",
            "Content-Length": str(free // 3),
        }
        sock = send_head(port, "POST", "/v1/datasets", head)
        status, body = read_response(sock)  # answered before the body is sent
        sock.close()
    assert status == 507, body
    assert json.loads(body)["error"]["code"] == "insufficient_storage"

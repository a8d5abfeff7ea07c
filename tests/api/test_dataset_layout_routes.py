"""POST /v1/datasets with the archive layouts that need no manifest: captioned images with a trigger word,
and pair folders; captions_missing on the dataset; the trigger word in the idempotency check."""

from __future__ import annotations

import io
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.orm import Session

from core.repositories import tenants as tenant_repo
from core.settings import Settings
from tests.support.archives import zip_bytes


def headers(session: Session, settings: Settings) -> dict[str, str]:
    tenant = tenant_repo.create_tenant(session, "layouts")
    _, clear = tenant_repo.create_api_key(
        session, tenant_id=tenant.id, pepper=settings.api_key_pepper.get_secret_value()
    )
    session.commit()
    return {"Authorization": f"Bearer {clear}"}


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, "PNG")
    return buffer.getvalue()


CAPTIONED = zip_bytes(
    {"a.png": png((200, 0, 0)), "a.txt": b"a photo of [trigger] dog", "b.png": png((200, 0, 0))}
)


def post(client: TestClient, auth: dict[str, str], payload: bytes, **data: str) -> dict[str, Any]:
    response = client.post("/v1/datasets", files={"file": ("up.zip", payload)}, data=data, headers=auth)
    return {"http_status": response.status_code, **response.json()}


def test_captioned_images_with_a_trigger_word(
    client: TestClient, session: Session, settings: Settings
) -> None:
    auth = headers(session, settings)
    made = post(client, auth, CAPTIONED, kind="targets", trigger_word=" sks ")

    assert (made["http_status"], made["kind"], made["num_pairs"], made["captions_missing"]) == (
        201,
        "targets",
        2,
        1,
    )
    assert [p["prompt"] for p in made["preview"]] == ["a photo of sks dog", "sks"]
    got = client.get(f"/v1/datasets/{made['id']}", headers=auth).json()
    assert got["captions_missing"] == 1


def test_a_missing_caption_without_a_trigger_word_is_a_422_naming_row_and_field(
    client: TestClient, session: Session, settings: Settings
) -> None:
    refused = post(client, headers(session, settings), CAPTIONED, kind="targets")
    assert refused["http_status"] == 422
    assert {(p["row"], p["field"]) for p in refused["error"]["problems"]} == {(0, "caption"), (1, "caption")}


def test_pair_folders_upload_has_no_captions_count(
    client: TestClient, session: Session, settings: Settings
) -> None:
    payload = zip_bytes({"w/x.png": png((200, 0, 0)), "l/x.png": png((0, 0, 200)), "x.txt": b"a circle"})
    made = post(client, headers(session, settings), payload)
    assert (made["http_status"], made["kind"], made["num_pairs"], made["captions_missing"]) == (
        201,
        "pairs",
        1,
        None,
    )


def test_trigger_word_is_part_of_the_idempotent_request(
    client: TestClient, session: Session, settings: Settings
) -> None:
    keyed = {**headers(session, settings), "Idempotency-Key": "captions-1"}
    first = post(client, keyed, CAPTIONED, kind="targets", trigger_word="sks")
    again = post(client, keyed, CAPTIONED, kind="targets", trigger_word="sks")
    other = post(client, keyed, CAPTIONED, kind="targets", trigger_word="ohwx")
    assert (first["http_status"], again["http_status"], again["id"]) == (201, 201, first["id"])
    assert (other["http_status"], other["error"]["code"]) == (409, "idempotency_key_reused")


def test_overlong_trigger_word_is_a_422_naming_the_field(
    client: TestClient, session: Session, settings: Settings
) -> None:
    refused = post(client, headers(session, settings), CAPTIONED, kind="targets", trigger_word="x" * 101)
    assert refused["http_status"] == 422 and "trigger_word" in str(refused["error"])

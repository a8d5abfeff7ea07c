"""A masked upload through the API: the pair JSON links the mask, which is served like the pair's images."""

from __future__ import annotations

import io
import zipfile

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.orm import Session

from tests.support.api_calls import upload
from tests.support.archives import COOL, WARM, jsonl, pair_row, png
from tests.support.factories import auth_headers


@pytest.fixture
def headers(session: Session) -> dict[str, str]:
    return auth_headers(session)


def _mask_png() -> bytes:
    image = Image.new("L", (16, 16), 0)
    image.paste(255, (0, 0, 8, 16))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _masked_zip() -> bytes:
    """Two pairs; the first with a mask."""
    rows = [pair_row(0) | {"mask": "masks/0.png"}, pair_row(1)]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("pairs.jsonl", jsonl(rows))
        archive.writestr("masks/0.png", _mask_png())
        for i in range(2):
            archive.writestr(f"images/{i}_w.png", png(WARM))
            archive.writestr(f"images/{i}_c.png", png(COOL))
    return out.getvalue()


def test_the_pair_json_links_the_mask_and_the_route_serves_it(
    client: TestClient, headers: dict[str, str], session: Session
) -> None:
    dataset = upload(client, headers, _masked_zip())
    assert dataset["http_status"] == 201, dataset
    base = f"/v1/datasets/{dataset['id']}/pairs"
    assert [p["mask_url"] for p in dataset["preview"]] == [f"{base}/0/mask", None]
    listed = client.get(base, headers=headers).json()["data"]
    assert [p["mask_url"] for p in listed] == [f"{base}/0/mask", None]

    mask = client.get(listed[0]["mask_url"], headers=headers)
    assert (mask.status_code, mask.headers["content-type"]) == (200, "image/png")
    assert mask.content == _mask_png()
    none = client.get(f"{base}/1/mask", headers=headers)
    assert (none.status_code, none.json()["error"]["param"]) == (404, "role")
    assert client.get(f"{base}/0/mask", headers=auth_headers(session)).status_code == 404

"""Calls of the tus 1.0 protocol (/v1/uploads) that the upload tests share: create, patch, offset."""

from __future__ import annotations

import base64

import httpx
from fastapi.testclient import TestClient

TUS = {"Tus-Resumable": "1.0.0"}
PART = {**TUS, "Content-Type": "application/offset+octet-stream"}


def create(client: TestClient, headers: dict[str, str], length: int, filename: str = "pairs.zip") -> str:
    meta = f"filename {base64.b64encode(filename.encode()).decode()}"
    response = client.post(
        "/v1/uploads", headers={**headers, **TUS, "Upload-Length": str(length), "Upload-Metadata": meta}
    )
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == f"/v1/uploads/{response.json()['id']}"
    assert response.headers["Upload-Offset"] == "0"
    return str(response.json()["id"])


def patch(
    client: TestClient, headers: dict[str, str], upload_id: str, offset: int, data: bytes
) -> httpx.Response:
    return client.patch(
        f"/v1/uploads/{upload_id}", content=data, headers={**headers, **PART, "Upload-Offset": str(offset)}
    )


def offset(client: TestClient, headers: dict[str, str], upload_id: str) -> int:
    response = client.head(f"/v1/uploads/{upload_id}", headers={**headers, **TUS})
    assert response.status_code == 200, response.status_code
    assert response.headers["Cache-Control"] == "no-store"
    return int(response.headers["Upload-Offset"])

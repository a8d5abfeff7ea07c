"""Text that is not text: a lone UTF-16 surrogate ("\\ud800", a legal JSON escape, or its UTF-8 bytes
ED A0 80 in a file) in any text field, of a job's request or of any dataset layout's rows, is a 422 naming
the field (and the row), never a 500."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from tests.support.archives import COOL, WARM, png, zip_bytes
from tests.support.factories import auth_headers, create_dataset, create_tenant
from tests.support.tus import TUS, patch

LONE = "\ud800"
LONE_UTF8 = b"\xed\xa0\x80"  # what a careless encoder writes for it; no UTF-8 decoder accepts it


@pytest.fixture
def headers_and_dataset(session: Session) -> tuple[dict[str, str], str]:
    tenant = create_tenant(session)
    dataset = create_dataset(session, tenant_id=tenant.id)
    session.commit()
    return auth_headers(session, tenant), dataset.id


def _escaped(value: object) -> str:
    """JSON as a client writes it: the surrogate as the escape \\ud800 (json.dumps' default)."""
    return json.dumps(value)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"validation": {"prompts": ["a cat", f"a {LONE} dog"]}}, "validation.prompts.1"),
        ({"metadata": {"note": LONE}}, "metadata.note"),
        ({"metadata": {LONE: "v"}}, "metadata."),
        ({"webhooks": [{"url": f"https://example.com/{LONE}"}]}, "webhooks.0.url"),
        (
            {"hyperparameters": {"lora_target_modules": [f"to_{LONE}"]}},
            "hyperparameters.lora_target_modules.0",
        ),
    ],
)
def test_a_lone_surrogate_in_a_job_request_is_422_naming_the_field(
    client: TestClient,
    headers_and_dataset: tuple[dict[str, str], str],
    fields: dict[str, Any],
    param: str,
) -> None:
    # pydantic's JSON parsing refuses the escape in every str field of every request body: this keeps it so.
    headers, dataset_id = headers_and_dataset
    body = _escaped({"dataset_id": dataset_id, "base_model": "tiny-sd", **fields})
    response = client.post("/v1/jobs", content=body, headers={**headers, "Content-Type": "application/json"})
    assert response.status_code == 422, response.text[:500]
    assert response.json()["error"]["param"].startswith(param)


def _pairs_zip(rows: list[dict[str, str]]) -> bytes:
    files = {"pairs.jsonl": "".join(_escaped(row) + "\n" for row in rows).encode()}
    for i in range(len(rows)):
        files[f"images/{i}_w.png"], files[f"images/{i}_c.png"] = png(WARM), png(COOL)
    return zip_bytes(files)


def _row(i: int, **override: str) -> dict[str, str]:
    return {
        "prompt": f"a warm shape {i}",
        "chosen": f"images/{i}_w.png",
        "rejected": f"images/{i}_c.png",
    } | override


def _parquet_with_raw_caption(caption: bytes) -> bytes:
    """A Pick-a-Pic parquet whose caption column holds `caption` unvalidated (pyarrow checks UTF-8 when
    it builds a string array from Python, not when it reads a file's pages)."""
    offsets = pa.py_buffer(pa.array([0, len(caption)], pa.int32()).buffers()[1])
    captions = pa.Array.from_buffers(pa.string(), 1, [None, offsets, pa.py_buffer(caption)])
    table = pa.table(
        {
            "caption": captions,
            "jpg_0": pa.array([png(WARM)], pa.binary()),
            "jpg_1": pa.array([png(COOL)], pa.binary()),
            "label_0": pa.array([1.0]),
            "label_1": pa.array([0.0]),
        }
    )
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def _pair_folders(caption_line: bytes) -> bytes:
    return zip_bytes({"w/a.png": png(WARM), "l/a.png": png(COOL), "captions.jsonl": caption_line + b"\n"})


def _captioned_images(caption: bytes) -> bytes:
    return zip_bytes({"a.png": png(WARM), "a.txt": caption})


def _csv(prompt: bytes) -> bytes:
    csv = b"prompt,chosen,rejected\n" + prompt + b",images/0_w.png,images/0_c.png\n"
    return zip_bytes({"pairs.csv": csv, "images/0_w.png": png(WARM), "images/0_c.png": png(COOL)})


UPLOADS: dict[str, tuple[str, bytes, dict[str, str], str]] = {
    # name: (file name, bytes, form fields, the field a problem names)
    "jsonl prompt": ("up.zip", _pairs_zip([_row(0), _row(1, prompt=f"a {LONE}")]), {}, "prompt"),
    "jsonl image path": ("up.zip", _pairs_zip([_row(0, chosen=f"images/{LONE}.png")]), {}, "chosen"),
    "jsonl generation prompt": (
        "up.zip",
        zip_bytes(
            {
                "pairs.jsonl": (
                    _escaped({"prompt": "a warm shape", "image": "want/0.png", "generation_prompt": LONE})
                    + "\n"
                ).encode(),
                "want/0.png": png(WARM),
            }
        ),
        {"kind": "avoid"},
        "generation_prompt",
    ),
    "csv prompt": ("up.zip", _csv(b"a " + LONE_UTF8), {}, ""),
    "parquet caption": ("up.parquet", _parquet_with_raw_caption(b"a " + LONE_UTF8), {}, "caption"),
    "captions.jsonl caption": (
        "up.zip",
        _pair_folders(_escaped({"file_name": "a.png", "caption": LONE}).encode()),
        {},
        "caption",
    ),
    "caption txt file": ("up.zip", _captioned_images(b"a " + LONE_UTF8), {"kind": "targets"}, "caption"),
}


@pytest.mark.parametrize("layout", sorted(UPLOADS))
def test_a_lone_surrogate_in_any_layout_s_rows_is_422_naming_it(
    client: TestClient, session: Session, layout: str
) -> None:
    name, payload, form, field = UPLOADS[layout]
    headers = auth_headers(session, create_tenant(session))
    session.commit()
    response = client.post("/v1/datasets", files={"file": (name, payload)}, data=form, headers=headers)
    assert response.status_code == 422, response.text[:800]
    problems = response.json()["error"]["problems"]
    assert any(
        (not field or p["field"] == field) and ("surrogate" in p["reason"] or "UTF-8" in p["reason"])
        for p in problems
    ), problems


def test_bytes_that_are_not_utf8_in_an_upload_s_form_fields_are_stored_safely(
    client: TestClient, session: Session
) -> None:
    headers = auth_headers(session, create_tenant(session))
    session.commit()
    payload = _captioned_images(b"a photo of [trigger] dog")
    response = client.post(
        "/v1/datasets",
        files={"file": ("up.zip", payload)},
        data={"kind": "targets", "trigger_word": b"sks" + LONE_UTF8},
        headers=headers,
    )
    # The form parser decodes with replacement characters: stored as text, shown as stored.
    assert response.status_code == 201, response.text[:800]
    assert response.json()["preview"][0]["prompt"] == "a photo of sks\ufffd\ufffd\ufffd dog"


@pytest.mark.parametrize(
    "filename",
    [pytest.param(b"up" + LONE_UTF8 + b".zip", id="tus metadata"), pytest.param(None, id="multipart")],
)
def test_a_file_name_that_is_not_utf8_is_refused_or_stored_safely(
    client: TestClient, session: Session, filename: bytes | None
) -> None:
    headers = auth_headers(session, create_tenant(session))
    session.commit()
    payload = _pairs_zip([_row(0)])
    if filename is not None:
        meta = f"filename {base64.b64encode(filename).decode()}"
        created = client.post(
            "/v1/uploads",
            headers={**headers, **TUS, "Upload-Length": str(len(payload)), "Upload-Metadata": meta},
        )
        assert created.status_code in (201, 400, 422), created.text[:500]
        if created.status_code != 201:
            return
        upload_id = created.json()["id"]
        assert patch(client, headers, upload_id, 0, payload).status_code == 204
        response = client.post(f"/v1/uploads/{upload_id}/dataset", headers=headers)
    else:
        disposition = b'Content-Disposition: form-data; name="file"; filename="up' + LONE_UTF8 + b'.zip"'
        body = b"--b\r\n" + disposition + b"\r\n\r\n" + payload + b"\r\n--b--\r\n"
        multipart = {**headers, "Content-Type": "multipart/form-data; boundary=b"}
        response = client.post("/v1/datasets", content=body, headers=multipart)
    assert response.status_code in (201, 400, 422), response.text[:500]
    if response.status_code == 201:
        response.json()["name"].encode("utf-8")  # stored as text

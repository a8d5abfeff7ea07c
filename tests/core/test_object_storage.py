"""The Storage protocol's behaviour, the same on the local directory and on a real S3 server (SeaweedFS)."""

import hashlib
import io
import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.awsrequest import AWSResponse
from pydantic import SecretStr

from core.object_storage import S3Storage, StorageAccessDenied
from core.settings import Settings
from core.storage import (
    DELETE_FAILURES,
    InvalidStorageKey,
    Storage,
    StorageDeleteError,
    build_storage,
    dataset_key,
    job_key,
)
from tests.support.storage_backends import s3_settings

BOTH = pytest.mark.parametrize("backend", ["local", pytest.param("s3", marks=pytest.mark.s3)], indirect=True)
S3_ONLY = pytest.mark.parametrize("backend", [pytest.param("s3", marks=pytest.mark.s3)], indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    extra = s3_settings(request.getfixturevalue("seaweedfs")) if request.param == "s3" else {}
    return Settings(data_dir=tmp_path / "data", **extra)


@pytest.fixture
def store(backend: Settings) -> Storage:
    return build_storage(backend)


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


@BOTH
@pytest.mark.parametrize("key", ["../outside", "/etc/passwd", "a/../../b", "", "a//b", "./a", "a\\..\\b"])
def test_keys_that_leave_the_root_are_refused(store: Storage, key: str) -> None:
    with pytest.raises(InvalidStorageKey):
        store.write_stream(key, io.BytesIO(b"x"))
    with pytest.raises(InvalidStorageKey):
        store.exists(key)


@BOTH
def test_a_multipart_sized_object_round_trips_with_its_size_and_sha256(store: Storage) -> None:
    payload = os.urandom(40 << 20) + b"tail"  # above the 16 MiB multipart threshold: three parts
    stored = store.write_stream("tenants/t/jobs/j/adapter.safetensors", io.BytesIO(payload))
    assert (stored.bytes, stored.sha256) == (len(payload), hashlib.sha256(payload).hexdigest())
    with store.open_read(stored.key) as f:
        assert hashlib.sha256(f.read()).hexdigest() == stored.sha256
    assert store.size(stored.key) == len(payload)


@BOTH
def test_missing_files_raise_file_not_found(store: Storage) -> None:
    with pytest.raises(FileNotFoundError):
        store.open_read("tenants/t/none.bin")
    with pytest.raises(FileNotFoundError):
        store.size("tenants/t/none.bin")


@BOTH
def test_exists_is_true_for_files_and_non_empty_folders(store: Storage) -> None:
    store.write_stream(f"{dataset_key('t', 'd')}/images/1.png", io.BytesIO(b"png"))
    assert store.exists(f"{dataset_key('t', 'd')}/images/1.png")
    assert store.exists(dataset_key("t", "d"))
    assert not store.exists(dataset_key("t", "other"))
    assert not store.exists(f"{dataset_key('t', 'd')}/images/1")


@BOTH
def test_delete_tree_removes_folders_only_under_the_key_and_ignores_missing(store: Storage) -> None:
    for name in ("d/images/1.png", "d/manifest.json", "d2/manifest.json"):
        store.write_stream(f"tenants/t/datasets/{name}", io.BytesIO(b"x"))
    store.delete_tree(dataset_key("t", "d"))
    assert not store.exists(dataset_key("t", "d"))
    assert store.exists(dataset_key("t", "d2")), "a sibling whose name starts the same stays"
    store.delete_tree(dataset_key("t", "d"))


@BOTH
def test_put_tree_then_fetch_tree_copies_every_file(store: Storage, tmp_path: Path) -> None:
    files = {"manifest.json": b"{}", "pairs.jsonl": b"row\n", "images/000000_chosen.png": os.urandom(1000)}
    store.put_tree(job_key("t", "j"), _tree(tmp_path / "src", files), last="manifest.json")
    key = job_key("t", "j")
    assert store.list_keys(key) == sorted(f"{key}/{name}" for name in files)
    copied = store.fetch_tree(key, tmp_path / "dest")
    assert copied == sum(len(c) for c in files.values())
    assert {n: (tmp_path / "dest" / n).read_bytes() for n in files} == files
    assert store.list_keys(job_key("t", "none")) == []


@BOTH
def test_downloads_stream_through_the_api_unless_presigning_is_on(store: Storage) -> None:
    store.write_stream("tenants/t/a.bin", io.BytesIO(b"adapter"))
    assert (
        store.download_url("tenants/t/a.bin", filename="a.bin", media_type="application/octet-stream") is None
    )


@S3_ONLY
def test_s3_writes_a_folders_marker_after_every_other_file(store: Storage, tmp_path: Path) -> None:
    assert isinstance(store, S3Storage)
    written: list[str] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        written.append(params["Key"].rsplit("/", 1)[-1])

    # Observe the real requests (the multipart part of the big file included) as they leave the client.
    store.client.meta.events.register("before-parameter-build.s3.PutObject", record)
    store.client.meta.events.register("before-parameter-build.s3.CreateMultipartUpload", record)
    files = {"a.bin": b"a", "state.json": b"{}", "z.bin": os.urandom(20 << 20), "sub/y.bin": b"y"}
    store.put_tree("tenants/t/jobs/j/checkpoints/step-000002", _tree(tmp_path, files), last="state.json")
    assert sorted(written) == sorted(files_base(files)) and written[-1] == "state.json"


@S3_ONLY
def test_s3_presigned_download_url_serves_the_object_as_an_attachment(backend: Settings) -> None:
    store = build_storage(backend.model_copy(update={"storage_presign_downloads": True}))
    store.write_stream("tenants/t/a.bin", io.BytesIO(b"adapter"))
    url = store.download_url("tenants/t/a.bin", filename="lora.safetensors", media_type="application/x-lora")
    assert url is not None
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == b"adapter"
    assert response.headers["content-disposition"] == 'attachment; filename="lora.safetensors"'


@S3_ONLY
def test_presigned_urls_name_the_public_endpoint_when_clients_reach_the_store_elsewhere(
    backend: Settings,
) -> None:
    # The API reaches the store at 127.0.0.1; users reach the same server as `localhost` (in production:
    # an internal service name versus a public host name). The URL must be signed for the public one.
    assert backend.s3_endpoint_url is not None and "127.0.0.1" in backend.s3_endpoint_url
    public = backend.s3_endpoint_url.replace("127.0.0.1", "localhost")
    store = build_storage(
        backend.model_copy(update={"storage_presign_downloads": True, "s3_public_endpoint_url": public})
    )
    store.write_stream("tenants/t/a.bin", io.BytesIO(b"adapter"))
    url = store.download_url("tenants/t/a.bin", filename="a.bin", media_type="application/octet-stream")
    assert url is not None and url.startswith(public + "/")
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == b"adapter"


@S3_ONLY
def test_credentials_the_store_refuses_fail_at_start_naming_the_settings(backend: Settings) -> None:
    wrong = backend.model_copy(update={"s3_secret_access_key": SecretStr("not-the-secret")})
    with pytest.raises(StorageAccessDenied) as refused:
        build_storage(wrong)
    message = str(refused.value)
    assert "MAPO_S3_SECRET_ACCESS_KEY" in message and str(backend.s3_endpoint_url) in message


def files_base(files: dict[str, bytes]) -> list[str]:
    return [name.rsplit("/", 1)[-1] for name in files]


class _Body:
    """The raw body of a canned HTTP answer (botocore reads it with stream())."""

    def __init__(self, content: bytes) -> None:
        self.content = content

    def stream(self, **_: Any) -> Any:
        yield self.content


def refuse_deletes_of(store: S3Storage, name: str, code: str = "AccessDenied") -> None:
    """Make the store answer every DeleteObjects with a per-key error for object `name` (HTTP 200, as S3
    answers when some keys of a batch fail): what a bucket policy or an object lock does on AWS. The request
    never reaches the server, so every object stays where it is."""

    def answer(request: Any, **_: Any) -> AWSResponse:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?><DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Error><Key>{name}</Key><Code>{code}</Code><Message>Access Denied</Message></Error>"
            "</DeleteResult>"
        ).encode()
        return AWSResponse(request.url, 200, {"Content-Type": "application/xml"}, _Body(body))

    store.client.meta.events.register("before-send.s3.DeleteObjects", answer)


@S3_ONLY
def test_s3_delete_tree_raises_and_counts_the_keys_the_store_refused_to_delete(
    store: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    assert isinstance(store, S3Storage)
    key = dataset_key("t", "d")
    for name in ("images/1.png", "manifest.json"):
        store.write_stream(f"{key}/{name}", io.BytesIO(b"x"))
    refuse_deletes_of(store, store.object_name(f"{key}/images/1.png"))
    before = DELETE_FAILURES._value.get()

    with (
        caplog.at_level(logging.ERROR, logger="core.object_storage"),
        pytest.raises(StorageDeleteError) as refused,
    ):
        store.delete_tree(key)

    assert refused.value.failures == [(f"{key}/images/1.png", "AccessDenied", "Access Denied")]
    assert f"{key}/images/1.png" in str(refused.value) and "AccessDenied" in str(refused.value)
    assert DELETE_FAILURES._value.get() == before + 1
    assert any(f"{key}/images/1.png" in r.getMessage() for r in caplog.records)


@S3_ONLY
def test_s3_multipart_uploads_cut_off_by_a_crash_are_aborted(store: Storage) -> None:
    assert isinstance(store, S3Storage)
    # What a process killed in the middle of write_stream leaves: an upload begun, a part sent, no end.
    name = store.object_name("tenants/t/jobs/j/adapter.safetensors")
    begun = store.client.create_multipart_upload(Bucket=store.bucket, Key=name)
    store.client.upload_part(
        Bucket=store.bucket, Key=name, UploadId=begun["UploadId"], PartNumber=1, Body=os.urandom(5 << 20)
    )

    assert store.abort_incomplete_uploads(older_than=timedelta(days=1)) == [], "a recent upload may be live"
    assert store.abort_incomplete_uploads(older_than=timedelta(0)) == ["tenants/t/jobs/j/adapter.safetensors"]
    listed = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.object_name("tenants"))
    assert listed.get("Uploads", []) == []


@BOTH
def test_abort_incomplete_uploads_leaves_stored_files_alone(store: Storage) -> None:
    store.write_stream("tenants/t/a.bin", io.BytesIO(b"adapter"))
    assert store.abort_incomplete_uploads(older_than=timedelta(0)) == []
    assert store.exists("tenants/t/a.bin")

"""`S3Storage`: the `Storage` protocol over the S3 API (AWS S3, SeaweedFS, MinIO, ...), with boto3.

Every key lives under `s3://<bucket>/<prefix>/`. Large files go up as multipart uploads and come down as
ranged parallel GETs (boto3's transfer manager); an object appears only when its upload completes, so a
reader never sees half a file. A folder appears file by file, which is why datasets and checkpoints carry a
marker written last (see `core.storage`).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, cast

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from core.settings import Settings
from core.storage import (
    ABORTED_UPLOADS,
    DELETE_FAILURES,
    DeleteFailure,
    StorageDeleteError,
    StoredFile,
    check_key,
    tree_files,
)

log = logging.getLogger(__name__)

# 16 MiB parts: few enough requests for multi-GB checkpoints, small enough to retry cheaply.
TRANSFER = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=16 << 20, max_concurrency=8)
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_REFUSED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
_DELETE_BATCH = 1000  # the most keys one DeleteObjects request takes


class _HashingReader:
    """Wraps a stream so whatever boto3 reads from it is counted and hashed on the way."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream, self.digest, self.bytes = stream, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.stream.read(size)
        self.digest.update(chunk)
        self.bytes += len(chunk)
        return chunk


class StorageAccessDenied(PermissionError):
    """The object store refused our credentials (raised at start, so a misconfigured service says so)."""


def _is_missing(exc: ClientError) -> bool:
    return _code(exc) in _MISSING


def _failure(key: str, error: dict[str, Any]) -> DeleteFailure:
    return DeleteFailure(key=key, code=str(error.get("Code", "")), message=str(error.get("Message", "")))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code"))


def _client(settings: Settings, endpoint_url: str | None) -> Any:
    secret = settings.s3_secret_access_key
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        # Path-style URLs work with every S3-compatible server (virtual hosts need DNS per bucket).
        config=Config(
            s3={"addressing_style": "path"},
            # SigV4 for presigned URLs too (botocore would sign those with the legacy SigV2, which
            # SeaweedFS rejects once a URL carries response-content-disposition, and newer AWS regions
            # reject outright).
            signature_version="s3v4",
            retries={"mode": "standard", "max_attempts": 5},
        ),
    )


class S3Storage:
    """A bucket (and a key prefix in it) of an S3-compatible object store."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        presign_seconds: int | None = None,
        presigner: Any = None,
    ) -> None:
        self.client, self.bucket = client, bucket
        self.prefix = prefix.strip("/")
        self.presign_seconds = presign_seconds
        # A signature covers the host, so URLs for clients elsewhere are signed by a client of that host
        # (presigning is local: this one never connects).
        self.presigner = presigner or client

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        bucket, prefix = settings.s3_location
        client = _client(settings, settings.s3_endpoint_url)
        presign = settings.storage_presign_seconds if settings.storage_presign_downloads else None
        public = settings.s3_public_endpoint_url
        presigner = _client(settings, public) if presign and public else None
        return cls(client, bucket, prefix, presign_seconds=presign, presigner=presigner)

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (where the credentials may; otherwise it must exist)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) in _REFUSED:
                raise StorageAccessDenied(
                    f"the object store at {self.client.meta.endpoint_url} refused access to bucket "
                    f"{self.bucket!r} ({_code(exc)}): check MAPO_S3_ACCESS_KEY_ID and "
                    "MAPO_S3_SECRET_ACCESS_KEY, and that the key may use the bucket"
                ) from exc
            if not _is_missing(exc):
                raise
            self.client.create_bucket(Bucket=self.bucket)

    def object_name(self, key: str) -> str:
        """The S3 object key of storage key `key` (`InvalidStorageKey` if it is not clean)."""
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _key_of(self, name: str) -> str:
        return name[len(self.prefix) + 1 :] if self.prefix else name

    def open_read(self, key: str) -> BinaryIO:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.object_name(key))
        except ClientError as exc:
            if _is_missing(exc):
                raise FileNotFoundError(f"no stored file {key!r}") from None
            raise
        return cast(BinaryIO, response["Body"])

    def write_stream(self, key: str, stream: BinaryIO) -> StoredFile:
        reader = _HashingReader(stream)
        self.client.upload_fileobj(reader, self.bucket, self.object_name(key), Config=TRANSFER)
        return StoredFile(key=key, bytes=reader.bytes, sha256=reader.digest.hexdigest())

    def put_tree(self, key: str, source: Path, *, last: str | None = None) -> None:
        for path in tree_files(source, last=last):
            name = self.object_name(f"{key}/{path.relative_to(source).as_posix()}")
            self.client.upload_file(str(path), self.bucket, name, Config=TRANSFER)

    def fetch_tree(self, key: str, dest: Path) -> int:
        total = 0
        for file_key in self.list_keys(key):
            target = dest.joinpath(*check_key(file_key[len(key) + 1 :]))
            target.parent.mkdir(parents=True, exist_ok=True)
            # Into a temp file beside the target first: an interrupted download leaves no half file.
            with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as t:
                tmp = Path(t.name)
            try:
                self.client.download_file(self.bucket, self.object_name(file_key), str(tmp), Config=TRANSFER)
                tmp.replace(target)
            finally:
                tmp.unlink(missing_ok=True)
            total += target.stat().st_size
        return total

    def list_keys(self, key: str) -> list[str]:
        prefix = self.object_name(key) + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        names = [
            item["Key"]
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        ]
        return sorted(self._key_of(name) for name in names)

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.object_name(key))
            return True
        except ClientError as exc:
            if not _is_missing(exc):
                raise
        listed = self.client.list_objects_v2(
            Bucket=self.bucket, Prefix=self.object_name(key) + "/", MaxKeys=1
        )
        return bool(listed.get("KeyCount", 0))

    def size(self, key: str) -> int:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.object_name(key))
        except ClientError as exc:
            if _is_missing(exc):
                raise FileNotFoundError(f"no stored file {key!r}") from None
            raise
        return int(head["ContentLength"])

    def delete_tree(self, key: str) -> None:
        names = [self.object_name(key), *(self.object_name(k) for k in self.list_keys(key))]
        failures: list[DeleteFailure] = []
        for start in range(0, len(names), _DELETE_BATCH):
            batch = [{"Key": name} for name in names[start : start + _DELETE_BATCH]]
            # Quiet: the answer lists only the keys that were not deleted (HTTP 200 all the same).
            answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            failures += [_failure(self._key_of(e.get("Key", "")), e) for e in answer.get("Errors", [])]
        if failures:
            DELETE_FAILURES.inc(len(failures))
            error = StorageDeleteError(key, failures)
            log.error("%s", error)
            raise error

    def abort_incomplete_uploads(self, *, older_than: timedelta) -> list[str]:
        """Abort the multipart uploads under the prefix begun more than `older_than` ago: the parts of an
        upload whose process died are stored (and billed) until aborted. A younger one may still be live."""
        cutoff = datetime.now(UTC) - older_than
        paginator = self.client.get_paginator("list_multipart_uploads")
        prefix = f"{self.prefix}/" if self.prefix else ""
        aborted = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for upload in page.get("Uploads", []):
                if upload["Initiated"] > cutoff:
                    continue
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
                aborted.append(self._key_of(upload["Key"]))
        if aborted:
            ABORTED_UPLOADS.inc(len(aborted))
            log.warning(
                "aborted %d multipart upload(s) left by a dead writer: %s", len(aborted), ", ".join(aborted)
            )
        return aborted

    def local_dir(self, key: str) -> None:
        return None

    def download_url(self, key: str, *, filename: str, media_type: str) -> str | None:
        if self.presign_seconds is None:
            return None
        params = {
            "Bucket": self.bucket,
            "Key": self.object_name(key),
            "ResponseContentDisposition": f'attachment; filename="{filename}"',
            "ResponseContentType": media_type,
        }
        url: str = self.presigner.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=self.presign_seconds
        )
        return url

"""Where files live: a small `Storage` protocol with two backends, a local directory (`LocalStorage`, the
single-machine default, also a shared mount) and an S3-compatible object store (`core.object_storage`).

Keys are relative POSIX paths such as `tenants/<tenant>/jobs/<job>/adapter.safetensors`; a key that would
leave the root (absolute, `..`, empty parts) is refused with `InvalidStorageKey`. A "folder" is the set of
keys under `<key>/`. Folders whose readers must never see half of them (a dataset, a checkpoint) carry a
marker file that is written last and deleted first (`manifest.json`, `state.json`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol

from prometheus_client import Counter

from core.settings import Settings

CHUNK_BYTES = 1 << 20
# A writer that dies mid-upload leaves its parts in an object store; past this age none can be live.
INCOMPLETE_UPLOAD_MAX_AGE = timedelta(days=1)
# Counted here, served by the API's GET /metrics (api.monitoring), whichever backend counts them.
DELETE_FAILURES = Counter(
    "mapo_storage_delete_failures",
    "Objects the store refused to delete (still stored; each is also logged with its key).",
    registry=None,
)
ABORTED_UPLOADS = Counter(
    "mapo_storage_aborted_uploads",
    "Multipart uploads aborted because their writer died before completing them.",
    registry=None,
)


class InvalidStorageKey(ValueError):
    """The key is not a clean relative path inside the storage root."""


class DeleteFailure(NamedTuple):
    """One object the store refused to delete: its storage key and the store's error code and message."""

    key: str
    code: str
    message: str


class StorageDeleteError(Exception):
    """The store refused to delete some objects of a folder (they are still stored); every other object
    was deleted. Raised after the whole folder was tried, so a retry only has the refused ones left."""

    def __init__(self, key: str, failures: list[DeleteFailure]) -> None:
        self.key, self.failures = key, failures
        listed = ", ".join(f"{f.key} ({f.code}: {f.message})" for f in failures[:5])
        more = f" and {len(failures) - 5} more" if len(failures) > 5 else ""
        super().__init__(f"the store refused to delete {len(failures)} object(s) of {key}: {listed}{more}")


class StoredFile(NamedTuple):
    """What a write produced: the key, its size in bytes and the sha256 of its content in hex."""

    key: str
    bytes: int
    sha256: str


def dataset_key(tenant_id: str, dataset_id: str) -> str:
    """Folder of a dataset in the canonical layout."""
    return f"tenants/{tenant_id}/datasets/{dataset_id}"


def job_key(tenant_id: str, job_id: str) -> str:
    """Folder of a job's outputs (the trainer's output_dir)."""
    return f"tenants/{tenant_id}/jobs/{job_id}"


def check_key(key: str) -> list[str]:
    """The parts of `key`; `InvalidStorageKey` unless it is a clean relative POSIX path."""
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts) or "\\" in key:
        raise InvalidStorageKey(f"storage key {key!r} is not a clean relative path")
    return parts


def tree_files(source: Path, *, last: str | None = None) -> list[Path]:
    """Files under `source` in a stable order, the one at relative path `last` (if any) at the end."""
    files = sorted(p for p in source.rglob("*") if p.is_file())
    if last is not None:
        files.sort(key=lambda p: p.relative_to(source).as_posix() == last)
    return files


class Storage(Protocol):
    def open_read(self, key: str) -> BinaryIO:
        """A binary file object; the caller closes it. FileNotFoundError if there is no such file."""
        ...

    def write_stream(self, key: str, stream: BinaryIO) -> StoredFile:
        """Store `stream` under `key`, atomically: readers see the old object or the whole new one."""
        ...

    def put_tree(self, key: str, source: Path, *, last: str | None = None) -> None:
        """Store every file under the local folder `source` as `<key>/<relative path>`; the file at the
        relative path `last` (the folder's completion marker) is stored after all the others."""
        ...

    def fetch_tree(self, key: str, dest: Path) -> int:
        """Copy every file of folder `key` into the local folder `dest`; returns the bytes copied."""
        ...

    def list_keys(self, key: str) -> list[str]:
        """Keys of every file under folder `key`, sorted; empty if there are none."""
        ...

    def exists(self, key: str) -> bool:
        """True for a stored file and for a folder holding at least one file."""
        ...

    def size(self, key: str) -> int: ...

    def delete_tree(self, key: str) -> None:
        """Remove a file or folder; a missing key is not an error (deletes are retried). Objects the store
        refuses to delete raise `StorageDeleteError` (after the rest are deleted), logged and counted."""
        ...

    def abort_incomplete_uploads(self, *, older_than: timedelta) -> list[str]:
        """Abort the uploads begun more than `older_than` ago and never finished (their writer died) and
        return their keys; a store without such uploads returns []."""
        ...

    def local_dir(self, key: str) -> Path | None:
        """Where `key` lives on this machine if the backend is a directory (readers and writers then use it
        in place, with no copy); None for an object store."""
        ...

    def download_url(self, key: str, *, filename: str, media_type: str) -> str | None:
        """A time-limited URL a client can GET the file from directly, or None where downloads stream
        through the API."""
        ...


class LocalStorage:
    """A directory on this machine (or a shared mount)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def local_path(self, key: str) -> Path:
        """The absolute path of `key`; the worker hands these to the trainer."""
        return self.root.joinpath(*check_key(key))

    def local_dir(self, key: str) -> Path:
        return self.local_path(key)

    def download_url(self, key: str, *, filename: str, media_type: str) -> None:
        return None

    def key_of(self, path: Path) -> str:
        """The key of a path under the root (e.g. a file the trainer wrote)."""
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root) or resolved == self.root:
            raise InvalidStorageKey(f"{path} is not inside the storage root {self.root}")
        return resolved.relative_to(self.root).as_posix()

    def open_read(self, key: str) -> BinaryIO:
        """A binary file object; the caller closes it (responses stream it in chunks)."""
        return self.local_path(key).open("rb")

    def exists(self, key: str) -> bool:
        return self.local_path(key).exists()

    def size(self, key: str) -> int:
        return self.local_path(key).stat().st_size

    def write_stream(self, key: str, stream: BinaryIO) -> StoredFile:
        """Copy `stream` in chunks to a temp file beside the target, fsync, then rename: readers see the old
        file or the whole new one, never a partial one."""
        target = self.local_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return StoredFile(key=key, bytes=size, sha256=digest.hexdigest())

    def delete_tree(self, key: str) -> None:
        """Remove a file or folder; a missing key is not an error (deletes are retried)."""
        path = self.local_path(key)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def abort_incomplete_uploads(self, *, older_than: timedelta) -> list[str]:
        """Nothing to abort: a local write is a temp file renamed into place."""
        return []

    def put_tree(self, key: str, source: Path, *, last: str | None = None) -> None:
        """Copy `source` into a hidden sibling of the target, then rename it into place (the whole folder
        appears at once, so `last` needs no special order); an existing target is replaced."""
        target = self.local_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
        try:
            shutil.copytree(source, staging, dirs_exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def fetch_tree(self, key: str, dest: Path) -> int:
        shutil.copytree(self.local_path(key), dest, dirs_exist_ok=True)
        return sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())

    def list_keys(self, key: str) -> list[str]:
        folder = self.local_path(key)
        if not folder.is_dir():
            return []
        return sorted(self.key_of(p) for p in folder.rglob("*") if p.is_file())


def file_sha256(stream: BinaryIO) -> StoredFile:
    """Size and sha256 of a stream read in chunks (key left empty)."""
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(CHUNK_BYTES):
        digest.update(chunk)
        size += len(chunk)
    return StoredFile(key="", bytes=size, sha256=digest.hexdigest())


def build_storage(settings: Settings) -> Storage:
    """The backend `settings.storage_url` names: the local directory when it is empty, else S3."""
    if not settings.storage_url:
        return LocalStorage(settings.storage_root)
    from core.object_storage import S3Storage  # boto3 loads only where object storage is configured

    storage = S3Storage.from_settings(settings)
    storage.ensure_bucket()
    return storage

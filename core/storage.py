"""Where files live. A small `Storage` protocol so shared storage can replace the local directory later.

Keys are relative POSIX paths such as `tenants/<tenant>/jobs/<job>/adapter.safetensors`; a key that would
leave the root (absolute, `..`, empty parts) is refused with `InvalidStorageKey`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol

CHUNK_BYTES = 1 << 20


class InvalidStorageKey(ValueError):
    """The key is not a clean relative path inside the storage root."""


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


class Storage(Protocol):
    def open_read(self, key: str) -> BinaryIO: ...

    def write_stream(self, key: str, stream: BinaryIO) -> StoredFile: ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def delete_tree(self, key: str) -> None: ...

    def local_path(self, key: str) -> Path: ...

    def key_of(self, path: Path) -> str: ...


class LocalStorage:
    """A directory on this machine (or a shared mount)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def local_path(self, key: str) -> Path:
        """The absolute path of `key`; the worker hands these to the trainer."""
        parts = key.split("/")
        if any(part in ("", ".", "..") for part in parts) or "\\" in key:
            raise InvalidStorageKey(f"storage key {key!r} is not a clean relative path")
        return self.root.joinpath(*parts)

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


def file_sha256(stream: BinaryIO) -> StoredFile:
    """Size and sha256 of a stream read in chunks (key left empty)."""
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(CHUNK_BYTES):
        digest.update(chunk)
        size += len(chunk)
    return StoredFile(key="", bytes=size, sha256=digest.hexdigest())

"""Resumable uploads (the tus 1.0 core protocol, with its creation, expiration and termination
extensions): a large dataset is sent in parts, and a client whose connection drops asks for the offset
the server holds and sends only the rest. Once complete, the file becomes a dataset through the same
checks as a one-shot upload (`POST /v1/uploads/{id}/dataset`).

Each upload is a folder of files, not a database row, because its bytes are local to the API host that
receives them anyway: `tmp_dir/uploads/<tenant>/<upload>/` holds `info.json` (the declared length, the
file name, the dataset it became) and `data` (the bytes received, in order). The offset is the size of
`data`: what the kernel has accepted is what a client resumes from, so killing the API mid-part loses
only the part in flight. An exclusive `flock` on `lock` keeps two requests from writing one upload at
once; the kernel drops it when a process dies, however it dies.

Disk is reserved when an upload is created: one whose declared length, added to what every open upload
still has to receive, would leave less than `min_free_disk_bytes` free is refused (507), so accepted
uploads cannot fill the disk between them; a one-shot upload checks its declared size the same way
(`check_room`). One tenant's open uploads may reserve at most `max_reserved_upload_bytes`, so one tenant
cannot take the whole disk from the others. Uploads untouched for `upload_expiry_seconds` are removed, and
those that received nothing after `upload_start_expiry_seconds`; an expired upload is gone at once (404)
even before a sweep removes its folder. An upload whose dataset is refused (422) is removed with its bytes.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from api.errors import ApiError, Conflict, NotFound, PayloadTooLarge
from core.models import new_id
from core.settings import Settings

INFO_FILE, DATA_FILE, LOCK_FILE = "info.json", "data", "lock"
MAX_FILENAME_CHARS = 255


class InsufficientStorage(ApiError):
    status_code, code = 507, "insufficient_storage"


class TooManyUploads(ApiError):
    status_code, code = 429, "too_many_open_uploads"


@dataclass(frozen=True)
class UploadInfo:
    """What is known of an upload besides its bytes."""

    id: str
    length: int
    filename: str
    created_at: float
    dataset_id: str | None = None


@dataclass(frozen=True)
class UploadState:
    tenant_id: str
    info: UploadInfo
    offset: int
    expires_at: float

    @property
    def complete(self) -> bool:
        return self.offset == self.info.length


@dataclass
class _OpenUploads:
    """What the open uploads hold now: how many are the tenant's, and the bytes all of them may still
    bring (their declared lengths less what has arrived)."""

    of_tenant: int = 0
    pending_bytes: int = 0
    pending_of_tenant: int = 0


class UploadStore:
    """The resumable uploads of every tenant, under `root` (one folder per tenant, then per upload)."""

    def __init__(self, settings: Settings) -> None:
        self.root = settings.tmp_dir / "uploads"
        self.max_bytes = settings.max_upload_bytes
        self.expiry_seconds = settings.upload_expiry_seconds
        self.start_expiry_seconds = settings.upload_start_expiry_seconds
        self.max_reserved_bytes = settings.max_reserved_upload_bytes
        self.max_open = settings.max_open_uploads
        self.min_free_bytes = settings.min_free_disk_bytes

    def create(self, tenant_id: str, *, length: int, filename: str) -> UploadState:
        """Open a new upload of `length` bytes (413 past the upload limit, 429 with too many open for
        the tenant, 507 if the disk cannot hold it beside the others)."""
        if length > self.max_bytes:
            raise PayloadTooLarge(f"Upload-Length exceeds {self.max_bytes} bytes", param="Upload-Length")
        open_uploads = self._sweep(tenant_id)
        if open_uploads.of_tenant >= self.max_open:
            raise TooManyUploads(
                f"{self.max_open} uploads are already open; finish or delete one first", param="Upload-Length"
            )
        if open_uploads.pending_of_tenant + length > self.max_reserved_bytes:
            raise InsufficientStorage(
                f"your open uploads may still receive {open_uploads.pending_of_tenant} bytes, and a tenant's "
                f"may reserve at most {self.max_reserved_bytes} (MAPO_MAX_RESERVED_UPLOAD_BYTES); finish or "
                "delete one",
                param="Upload-Length",
            )
        self._reserve(length, pending=open_uploads.pending_bytes)
        tenant_dir = self.root / tenant_id
        tenant_dir.mkdir(parents=True, exist_ok=True)
        info = UploadInfo(new_id("up"), length, filename[-MAX_FILENAME_CHARS:], time.time())
        folder = tenant_dir / info.id
        folder.mkdir()
        (folder / DATA_FILE).touch()
        (folder / LOCK_FILE).touch()
        _write_info(folder, info)
        return self._state(folder, info)

    def get(self, tenant_id: str, upload_id: str) -> UploadState:
        """The upload's state; 404 for one that does not exist, expired, or is another tenant's."""
        folder = self._folder(tenant_id, upload_id)
        return self._state(folder, _read_info(folder))

    def open_part(self, tenant_id: str, upload_id: str, *, offset: int) -> UploadPart:
        """Begin writing a part at `offset`, which must be the offset the server holds (409 otherwise, or
        while another request writes this upload). The part holds the upload's lock until it is closed."""
        folder = self._folder(tenant_id, upload_id)
        lock = _lock(folder)
        try:
            info = _read_info(folder)
            held = (folder / DATA_FILE).stat().st_size
            if offset != held:
                raise Conflict(
                    f"Upload-Offset is {offset}, but the server holds {held} bytes of this upload",
                    param="Upload-Offset",
                    code="upload_offset_mismatch",
                )
            if info.dataset_id is not None:
                raise Conflict("the upload is already a dataset", param="upload_id", code="upload_finished")
            data = os.open(folder / DATA_FILE, os.O_WRONLY | os.O_APPEND)
        except BaseException:
            os.close(lock)
            raise
        return UploadPart(self, folder, info, lock=lock, data=data, room=info.length - held)

    @contextmanager
    def completed(self, tenant_id: str, upload_id: str) -> Iterator[tuple[UploadState, Path]]:
        """Hold the complete upload (409 if bytes are missing) and its data file while it is made a
        dataset; no other request can write or finish it meanwhile."""
        folder = self._folder(tenant_id, upload_id)
        with _locked(folder):
            state = self._state(folder, _read_info(folder))
            if not state.complete:
                raise Conflict(
                    f"the upload holds {state.offset} of its {state.info.length} bytes",
                    param="upload_id",
                    code="upload_incomplete",
                )
            yield state, folder / DATA_FILE

    def mark_dataset(self, tenant_id: str, upload_id: str, dataset_id: str) -> None:
        """Record which dataset the upload became (a repeated request answers with it) and free its bytes."""
        folder = self._folder(tenant_id, upload_id)
        info = _read_info(folder)
        _write_info(folder, UploadInfo(**{**asdict(info), "dataset_id": dataset_id}))
        (folder / DATA_FILE).write_bytes(b"")

    def delete(self, tenant_id: str, upload_id: str) -> None:
        folder = self._folder(tenant_id, upload_id)
        with _locked(folder):
            shutil.rmtree(folder)

    def expire(self) -> list[str]:
        """Remove every upload untouched for the expiry time (and not being written); returns their ids."""
        return [folder.name for folder in self.root.glob("*/*") if self._expire_if_stale(folder)]

    def check_room(self, length: int) -> None:
        """507 unless `length` more bytes (a one-shot upload's) fit beside what the open uploads were
        promised, keeping `min_free_bytes` free."""
        self._reserve(length, pending=self._sweep(None).pending_bytes)

    def remove_refused(self, state: UploadState) -> None:
        """Remove an upload whose dataset was refused, bytes and all, while `completed` holds it: it can
        never become a dataset, so it must hold neither disk nor one of the tenant's places."""
        shutil.rmtree(self.root / state.tenant_id / state.info.id)

    def _expire_if_stale(self, folder: Path) -> bool:
        """Remove `folder` if its upload is past its expiry and not being written; True if removed."""
        try:
            if self._state(folder, _read_info(folder)).expires_at > time.time():
                return False
            with _locked(folder):
                shutil.rmtree(folder)
            return True
        except (Conflict, NotFound, FileNotFoundError):
            return False  # being written, or removed by another process meanwhile

    def _sweep(self, tenant_id: str | None) -> _OpenUploads:
        """One pass over every tenant's uploads: the expired ones are removed, and the open ones (not yet
        a dataset) counted for `tenant_id` and summed for the bytes they may still bring."""
        open_uploads = _OpenUploads()
        for folder in self.root.glob("*/*"):
            if self._expire_if_stale(folder):
                continue
            try:
                state = self._state(folder, _read_info(folder))
            except NotFound:
                continue
            if state.info.dataset_id is None:
                pending = state.info.length - state.offset
                open_uploads.pending_bytes += pending
                if folder.parent.name == tenant_id:
                    open_uploads.of_tenant += 1
                    open_uploads.pending_of_tenant += pending
        return open_uploads

    def _reserve(self, length: int, *, pending: int) -> None:
        """507 unless the disk keeps `min_free_bytes` free after this upload and the `pending` bytes the
        open ones may still bring."""
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if free - pending - length < self.min_free_bytes:
            # No figures of the host's: its free space is not a tenant's business.
            raise InsufficientStorage(
                f"the server cannot hold {length} more bytes now; retry later", param="Upload-Length"
            )

    def _folder(self, tenant_id: str, upload_id: str) -> Path:
        # Ids are ours (`up_` + hex): anything else cannot name a folder, so no path can be built from it.
        if not (upload_id.startswith("up_") and upload_id[3:].isalnum() and len(upload_id) <= 64):
            raise NotFound(f"upload {upload_id!r} not found", param="upload_id")
        folder = self.root / tenant_id / upload_id
        if not (folder / INFO_FILE).is_file() or self._expire_if_stale(folder):
            raise NotFound(f"upload {upload_id!r} not found", param="upload_id")
        return folder

    def _state(self, folder: Path, info: UploadInfo) -> UploadState:
        try:
            offset = (folder / DATA_FILE).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"upload {info.id!r} not found", param="upload_id") from None
        if info.dataset_id is not None:
            offset = info.length  # its bytes were freed once it became a dataset
        # One that never received a byte may be a reservation nobody fills: it goes soon.
        expiry = self.expiry_seconds if offset else min(self.start_expiry_seconds, self.expiry_seconds)
        return UploadState(folder.parent.name, info, offset, _last_touched(folder) + expiry)


class UploadPart:
    """One part being written: the upload's lock and its data file, held until `close()`. Bytes past the
    declared length are refused (413) after the ones that fit are kept; a part cut short keeps what
    arrived."""

    def __init__(
        self, store: UploadStore, folder: Path, info: UploadInfo, *, lock: int, data: int, room: int
    ) -> None:
        self._store, self._folder, self._info = store, folder, info
        self._lock, self._data, self._room = lock, data, room

    def write(self, chunk: bytes) -> None:
        if len(chunk) > self._room:
            _write_all(self._data, chunk[: self._room])
            self._room = 0
            raise PayloadTooLarge("the part goes past the upload's Upload-Length", param="Upload-Offset")
        _write_all(self._data, chunk)
        self._room -= len(chunk)

    def close(self) -> UploadState:
        """Sync what arrived (a machine that crashes right after the answer still holds the offset it
        gave), release the lock, and return the upload's state."""
        try:
            os.fsync(self._data)
        finally:
            os.close(self._data)
            os.close(self._lock)
        return self._store._state(self._folder, self._info)


def _write_all(fd: int, data: bytes) -> None:
    """Write all of `data`: a disk that fills up makes a write short first, and only the next one fails
    (ENOSPC, answered 507); the offset is the file's size either way, so the client resumes from it."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    fd = _lock(folder)
    try:
        yield
    finally:
        os.close(fd)


def _lock(folder: Path) -> int:
    """The upload's exclusive lock, as an open descriptor (closing it releases the lock); 409 while
    another request holds it."""
    try:
        fd = os.open(folder / LOCK_FILE, os.O_CREAT | os.O_WRONLY, 0o600)
    except FileNotFoundError:
        raise NotFound(f"upload {folder.name!r} not found", param="upload_id") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Conflict(
            "another request is writing this upload", param="upload_id", code="upload_busy"
        ) from None
    return fd


def _read_info(folder: Path) -> UploadInfo:
    try:
        return UploadInfo(**json.loads((folder / INFO_FILE).read_text()))
    except FileNotFoundError:
        raise NotFound(f"upload {folder.name!r} not found", param="upload_id") from None


def _write_info(folder: Path, info: UploadInfo) -> None:
    pending = folder / f"{INFO_FILE}.tmp"
    pending.write_text(json.dumps(asdict(info)))
    os.replace(pending, folder / INFO_FILE)  # a reader sees the old file or the new one, never half


def _last_touched(folder: Path) -> float:
    return max((folder / name).stat().st_mtime for name in (INFO_FILE, DATA_FILE))

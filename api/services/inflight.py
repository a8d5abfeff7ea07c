"""Uploads in flight, and sweeping those whose API process died (SIGKILL, OOM, a lost host).

Each upload holds an exclusive `flock` on a marker file, `tmp_dir/inflight/<dataset_id>.lock`, that
names the dataset's storage folder; its scratch files (and, with object storage, the staging folder
`<dataset_id>.dataset` that is uploaded once ingested) sit beside it as `<dataset_id>.*`. The kernel drops
the lock when the process dies, however it dies, so a sweep that can take a marker's lock knows the
upload was abandoned, not merely slow, even with several API processes sharing the folder.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from api.services.ingest.service import staging_dirs
from core.storage import Storage

log = logging.getLogger(__name__)
LOCK_SUFFIX = ".lock"


def inflight_dir(tmp_dir: Path) -> Path:
    return tmp_dir / "inflight"


def staging_dir(folder: Path, dataset_id: str) -> Path:
    return folder / f"{dataset_id}.dataset"


class InflightUpload:
    """The marker of one upload; `release()` once its transaction has committed or rolled back."""

    def __init__(self, tmp_dir: Path, dataset_id: str, storage_key: str) -> None:
        folder = inflight_dir(tmp_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{dataset_id}{LOCK_SUFFIX}"
        self.scratch_prefix = f"{dataset_id}."
        # Locked under a name no sweep looks at, then renamed: a sweep never sees it unlocked.
        pending = folder / f"{dataset_id}.pending"
        self._fd = os.open(pending, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            os.write(self._fd, storage_key.encode())
            os.replace(pending, self.path)
        except OSError:
            # A full disk fails the write: no marker, then, and nothing left under the pending name.
            os.close(self._fd)
            pending.unlink(missing_ok=True)
            raise

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def staging_dir(self) -> Path:
        """Where the dataset is ingested before it is uploaded to an object store."""
        return staging_dir(self.folder, self.path.name.removesuffix(LOCK_SUFFIX))

    def release(self) -> None:
        """Forget the marker; the upload's outcome (a dataset row, or nothing) is final."""
        if self._fd < 0:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = -1


def sweep_abandoned_uploads(tmp_dir: Path, storage: Storage, is_recorded: Callable[[str], bool]) -> list[str]:
    """Delete the scratch files and ingest staging folders of every upload whose process died, and its
    dataset folder unless the dataset was recorded (the process died after its commit); returns the
    dataset ids swept."""
    folder = inflight_dir(tmp_dir)
    if not folder.is_dir():
        return []
    swept = []
    for marker in sorted(folder.glob(f"*{LOCK_SUFFIX}")):
        dataset_id = marker.name.removesuffix(LOCK_SUFFIX)
        try:
            fd = os.open(marker, os.O_RDONLY)
        except FileNotFoundError:
            continue  # finished meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live process is still receiving it
            storage_key = marker.read_text()
            if not is_recorded(dataset_id):
                storage.delete_tree(storage_key)
            local = storage.local_dir(storage_key)
            ingest_dest = [staging_dir(folder, dataset_id), *([local] if local is not None else [])]
            for staging in [s for dest in ingest_dest for s in staging_dirs(dest)]:
                shutil.rmtree(staging, ignore_errors=True)
            for scratch in folder.glob(f"{dataset_id}.*"):
                if scratch.is_dir():
                    shutil.rmtree(scratch, ignore_errors=True)
                else:
                    scratch.unlink(missing_ok=True)
            swept.append(dataset_id)
        finally:
            os.close(fd)
    if swept:
        log.warning("removed %d upload(s) abandoned by a dead API process: %s", len(swept), ", ".join(swept))
    return swept

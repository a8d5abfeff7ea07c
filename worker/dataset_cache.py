"""A worker's local cache of datasets read from an object store, bounded in bytes, least recently used out.

Each dataset is one folder `<root>/<hash of its key>/`, complete once its `.complete` marker exists (the
marker's mtime is its last use). A process using an entry holds a shared `flock` on `<entry>.lock` for as
long as it trains on it; eviction takes the lock exclusively without waiting, so an entry in use by any
worker process on this machine is never removed, and one being downloaded is never used half-done.
A download goes to `<root>/.fetch-<hash>/` and is renamed into place whole; what a killed download left
there is removed by the next eviction (its entry's lock is free) or the next download of that dataset.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.storage import Storage

log = logging.getLogger(__name__)
COMPLETE = ".complete"
LOCK_SUFFIX = ".lock"
EVICT_LOCK = ".evict.lock"
FETCH_PREFIX = ".fetch-"


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


class DatasetCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root, self.max_bytes = root, max_bytes

    def entry(self, key: str) -> Path:
        """The folder that holds the dataset at `key` once it is fetched."""
        return self.root / hashlib.sha256(key.encode()).hexdigest()[:32]

    @contextmanager
    def lease(self, storage: Storage, key: str) -> Iterator[Path]:
        """The local copy of folder `key` (fetched unless cached), kept from eviction until exit."""
        entry = self.entry(key)
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{entry}{LOCK_SUFFIX}", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            if not (entry / COMPLETE).exists():
                # Exclusive while fetching: another process wanting it waits, then finds it complete.
                fcntl.flock(fd, fcntl.LOCK_EX)
                if not (entry / COMPLETE).exists():
                    self._fetch(storage, key, entry)
                fcntl.flock(fd, fcntl.LOCK_SH)
            # Stamped from the fine-grained clock: a plain touch takes the kernel's coarse tick, which two
            # leases in a row can share, and the LRU order would then be a coin toss.
            now = time.time_ns()
            os.utime(entry / COMPLETE, ns=(now, now))
            self.evict()
            yield entry
        finally:
            os.close(fd)

    def fetching(self, key: str) -> Path:
        """Where the dataset at `key` is downloaded to before it becomes its entry (under its lock)."""
        return self.root / f"{FETCH_PREFIX}{self.entry(key).name}"

    def _fetch(self, storage: Storage, key: str, entry: Path) -> None:
        shutil.rmtree(entry, ignore_errors=True)
        staging = self.fetching(key)
        shutil.rmtree(staging, ignore_errors=True)  # what a killed download of it left
        staging.mkdir()
        try:
            copied = storage.fetch_tree(key, staging)
            if not any(staging.iterdir()):
                raise FileNotFoundError(f"dataset {key!r} is not in storage")
            (staging / COMPLETE).touch()
            os.replace(staging, entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("cached dataset %s (%d bytes) in %s", key, copied, entry)

    def evict(self) -> list[Path]:
        """Remove least recently used entries not in use until the cache fits `max_bytes`; returns them.
        Entries in use count towards the total but stay, so the cache may exceed its bound while they do.
        One process on the host evicts at a time: another's eviction would remove entries under this one
        as it measures them."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / EVICT_LOCK, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return self._evict()
        finally:
            os.close(fd)

    def _evict(self) -> list[Path]:
        self._remove_dead_downloads()
        entries = sorted(
            (p for p in self.root.iterdir() if (p / COMPLETE).exists()),
            key=lambda p: (p / COMPLETE).stat().st_mtime_ns,
        )
        sizes = {entry: _folder_bytes(entry) for entry in entries}
        total, evicted = sum(sizes.values()), []
        for entry in entries:
            if total <= self.max_bytes:
                break
            if self._remove_unless_used(entry):
                total -= sizes[entry]
                evicted.append(entry)
        return evicted

    def _remove_dead_downloads(self) -> None:
        """Download folders whose entry is not locked: their process died mid-download (a live one holds
        the entry's lock exclusively until it has renamed the folder into place)."""
        for staging in self.root.glob(f"{FETCH_PREFIX}*"):
            with _locked_unless_busy(self.root / staging.name.removeprefix(FETCH_PREFIX)) as free:
                if free:
                    shutil.rmtree(staging, ignore_errors=True)
                    log.info("removed the folder of an interrupted download, %s", staging.name)

    def _remove_unless_used(self, entry: Path) -> bool:
        with _locked_unless_busy(entry) as free:
            if not free:
                return False
            # The marker goes first: a crash halfway leaves an incomplete entry, refetched on next use.
            (entry / COMPLETE).unlink(missing_ok=True)
            shutil.rmtree(entry, ignore_errors=True)
            log.info("evicted cached dataset %s", entry.name)
            return True


@contextmanager
def _locked_unless_busy(entry: Path) -> Iterator[bool]:
    """Hold `entry`'s lock exclusively if no process (a lease, a download) holds it: yields whether it
    was free."""
    fd = os.open(f"{entry}{LOCK_SUFFIX}", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)

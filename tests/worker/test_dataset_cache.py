"""The worker's dataset cache: fetched once, least recently used out past its bound, never while in use."""

from __future__ import annotations

import fcntl
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pytest

from core.storage import LocalStorage
from worker.dataset_cache import COMPLETE, LOCK_SUFFIX, DatasetCache

DATASET_BYTES = 100_000


@pytest.fixture
def source(tmp_path: Path) -> LocalStorage:
    """Three stored datasets of DATASET_BYTES each (a local directory stands in for the object store)."""
    storage = LocalStorage(tmp_path / "store")
    for name in ("a", "b", "c"):
        folder = tmp_path / "src" / name
        (folder / "images").mkdir(parents=True)
        (folder / "images" / "0.png").write_bytes(os.urandom(DATASET_BYTES - 2))
        (folder / "manifest.json").write_bytes(b"{}")
        storage.put_tree(f"datasets/{name}", folder, last="manifest.json")
    return storage


def test_a_cached_dataset_is_read_without_fetching_again(source: LocalStorage, tmp_path: Path) -> None:
    cache = DatasetCache(tmp_path / "cache", max_bytes=10 * DATASET_BYTES)
    with cache.lease(source, "datasets/a") as first:
        assert (first / "manifest.json").read_bytes() == b"{}"
    source.delete_tree("datasets/a")
    with cache.lease(source, "datasets/a") as again:
        assert again == first and (again / "images" / "0.png").stat().st_size == DATASET_BYTES - 2


def test_the_least_recently_used_dataset_is_evicted_past_the_bound(
    source: LocalStorage, tmp_path: Path
) -> None:
    cache = DatasetCache(tmp_path / "cache", max_bytes=2 * DATASET_BYTES)
    for name in ("a", "b"):
        with cache.lease(source, f"datasets/{name}"):
            pass
    with cache.lease(source, "datasets/a"):  # a is now more recent than b
        pass
    with cache.lease(source, "datasets/c"):
        pass
    assert not cache.entry("datasets/b").exists()
    assert cache.entry("datasets/a").exists() and cache.entry("datasets/c").exists()


def test_a_dataset_in_use_is_never_evicted(source: LocalStorage, tmp_path: Path) -> None:
    cache = DatasetCache(tmp_path / "cache", max_bytes=DATASET_BYTES)
    with cache.lease(source, "datasets/a") as in_use:
        with cache.lease(source, "datasets/b"):
            assert (in_use / "images" / "0.png").exists(), "a is in use: the cache runs over its bound"
        with cache.lease(source, "datasets/c"):
            assert not cache.entry("datasets/b").exists()
        assert (in_use / "manifest.json").exists()


def test_a_missing_dataset_fails_and_leaves_no_entry(source: LocalStorage, tmp_path: Path) -> None:
    cache = DatasetCache(tmp_path / "cache", max_bytes=DATASET_BYTES)
    with pytest.raises(FileNotFoundError), cache.lease(source, "datasets/none"):
        pass
    assert not cache.entry("datasets/none").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def _evict_when_released(root: Path, max_bytes: int, start: Any) -> list[str]:
    start.wait()  # a barrier: every process, and the test, are here before any evicts
    return [p.name for p in DatasetCache(root, max_bytes=max_bytes).evict()]


def test_worker_processes_evicting_at_once_all_succeed_and_remove_each_entry_once(tmp_path: Path) -> None:
    # Several jobs starting together on one host each evict on lease: none may trip over an entry that
    # another process is removing (that failed the job with internal_error).
    root, entries, files = tmp_path / "cache", 40, 150
    for n in range(entries):
        entry = DatasetCache(root, max_bytes=0).entry(f"datasets/{n}")
        (entry / "images").mkdir(parents=True)
        for i in range(files):
            (entry / "images" / f"{i}.png").write_bytes(b"x" * 100)
        (entry / COMPLETE).touch()
    context = get_context("spawn")
    start = context.Manager().Barrier(4 + 1)
    with ProcessPoolExecutor(4, mp_context=context) as pool:
        futures = [pool.submit(_evict_when_released, root, 0, start) for _ in range(4)]
        # Released once all four processes are up and waiting, however long a loaded machine takes.
        try:
            start.wait(timeout=300)
        except threading.BrokenBarrierError:
            raise AssertionError("waited 300 s for the four evicting processes to start") from None
        evicted = [name for future in futures for name in future.result(timeout=120)]
    assert sorted(evicted) == sorted(
        DatasetCache(root, 0).entry(f"datasets/{n}").name for n in range(entries)
    )
    assert not [p for p in root.iterdir() if p.is_dir()]


def test_a_download_left_half_done_by_a_killed_worker_is_removed_but_not_one_in_progress(
    source: LocalStorage, tmp_path: Path
) -> None:
    cache = DatasetCache(tmp_path / "cache", max_bytes=10 * DATASET_BYTES)
    dead, live = cache.fetching("datasets/a"), cache.fetching("datasets/b")
    for folder in (dead, live):
        (folder / "images").mkdir(parents=True)
        (folder / "images" / "0.png").write_bytes(b"x" * 1000)
    # Another process is downloading b right now: it holds b's lock exclusively.
    fd = os.open(f"{cache.entry('datasets/b')}{LOCK_SUFFIX}", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with cache.lease(source, "datasets/c"):
            pass
        assert not dead.exists(), "a killed download's folder stays forever"
        assert live.exists(), "a download in progress was removed under its process"
    finally:
        os.close(fd)

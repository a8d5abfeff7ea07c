import hashlib
import io
from pathlib import Path

import pytest

from core.storage import InvalidStorageKey, LocalStorage, dataset_key, job_key


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "root")


@pytest.mark.parametrize("key", ["../outside", "/etc/passwd", "a/../../b", "", "a//b", "./a", "a\\..\\b"])
def test_keys_that_leave_the_root_are_refused(storage: LocalStorage, key: str) -> None:
    with pytest.raises(InvalidStorageKey):
        storage.local_path(key)


def test_write_stream_reports_size_and_sha256_and_reads_back(storage: LocalStorage) -> None:
    payload = b"x" * (3 << 20) + b"tail"
    stored = storage.write_stream("tenants/t/jobs/j/adapter.safetensors", io.BytesIO(payload))
    assert stored.bytes == len(payload)
    assert stored.sha256 == hashlib.sha256(payload).hexdigest()
    with storage.open_read(stored.key) as f:
        assert f.read() == payload
    assert storage.size(stored.key) == len(payload)


def test_failed_write_leaves_neither_target_nor_temp_file(storage: LocalStorage) -> None:
    class Broken(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise OSError("disk gone")

    with pytest.raises(OSError):
        storage.write_stream("a/b.bin", Broken())
    assert list((storage.root / "a").iterdir()) == []


def test_delete_tree_removes_folders_and_ignores_missing(storage: LocalStorage) -> None:
    storage.write_stream(f"{dataset_key('t', 'd')}/images/1.png", io.BytesIO(b"png"))
    storage.delete_tree(dataset_key("t", "d"))
    assert not storage.exists(dataset_key("t", "d"))
    storage.delete_tree(dataset_key("t", "d"))


def test_key_of_maps_paths_inside_the_root_and_refuses_others(storage: LocalStorage, tmp_path: Path) -> None:
    path = storage.local_path(job_key("t", "j")) / "checkpoint-10"
    assert storage.key_of(path) == "tenants/t/jobs/j/checkpoint-10"
    with pytest.raises(InvalidStorageKey):
        storage.key_of(tmp_path / "elsewhere")

"""Uploads whose API process died are swept at the next start, on either storage backend: staging folders
and scratch files go, and so do stored files of a dataset that was never recorded."""

from __future__ import annotations

import io
import multiprocessing
from pathlib import Path

import pytest

from api.services.inflight import InflightUpload, sweep_abandoned_uploads
from core.settings import Settings
from core.storage import Storage, dataset_key
from tests.support.storage_backends import BOTH_STORAGE_BACKENDS

pytestmark = BOTH_STORAGE_BACKENDS


def _die_mid_upload(tmp_dir: Path, dataset_id: str, key: str) -> None:
    marker = InflightUpload(tmp_dir, dataset_id, key)
    (marker.folder / f"{dataset_id}.scratch").write_bytes(b"half an upload")
    (marker.staging_dir / "images").mkdir(parents=True)
    (marker.staging_dir / "images" / "0.png").write_bytes(b"png")


def dead_upload(settings: Settings, storage: Storage, dataset_id: str) -> str:
    """An upload left by a process that died after storing some files (its flock dies with it)."""
    key = dataset_key("t", dataset_id)
    storage.write_stream(f"{key}/images/0.png", io.BytesIO(b"png"))
    child = multiprocessing.get_context("fork").Process(
        target=_die_mid_upload, args=(settings.tmp_dir, dataset_id, key)
    )
    child.start()
    child.join()
    assert child.exitcode == 0
    return key


@pytest.mark.parametrize("recorded", [False, True])
def test_an_abandoned_upload_is_swept_and_a_recorded_dataset_keeps_its_files(
    settings: Settings, storage: Storage, recorded: bool
) -> None:
    key = dead_upload(settings, storage, "ds_dead")
    live = InflightUpload(settings.tmp_dir, "ds_live", dataset_key("t", "ds_live"))  # still receiving
    assert sweep_abandoned_uploads(settings.tmp_dir, storage, lambda _: recorded) == ["ds_dead"]
    assert storage.exists(key) == recorded
    assert sorted(p.name for p in live.folder.iterdir()) == ["ds_live.lock"]
    live.release()

"""Pruning stored checkpoints the trainer rotated away: a store that refuses a delete does not fail the
flush that uploads the new checkpoint (its rows are still written); the next prune tries again."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from core.storage import DeleteFailure, LocalStorage, StorageDeleteError
from trainer.checkpoints import CHECKPOINTS_DIR, PREFIX, STATE_FILE
from worker.staging import JobOutputs
from worker.translate import CheckpointRow, Writes

KEY = "t/jobs/job_1"


class RefusingStore(LocalStorage):
    """A store that keeps files in a folder but behaves as a remote one (nothing is written in place),
    and refuses to delete while `refusing` is set, the way S3's per-key errors do."""

    refusing = True

    def local_dir(self, key: str) -> None:  # type: ignore[override]
        return None

    def delete_tree(self, key: str) -> None:
        if self.refusing:
            raise StorageDeleteError(key, [DeleteFailure(f"{key}/{STATE_FILE}", "AccessDenied", "no")])
        super().delete_tree(key)


def write_checkpoint(local: Path, step: int) -> CheckpointRow:
    folder = local / CHECKPOINTS_DIR / f"{PREFIX}{step}"
    folder.mkdir(parents=True)
    (folder / STATE_FILE).write_text("{}")
    return CheckpointRow(step=step, storage_key=f"{KEY}/{CHECKPOINTS_DIR}/{PREFIX}{step}", metrics={})


def test_a_refused_delete_is_logged_and_retried_on_the_next_prune(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = RefusingStore(tmp_path / "store")
    local = tmp_path / "work"
    outputs = JobOutputs(store, KEY, local)
    outputs.publish(Writes(checkpoints=[write_checkpoint(local, 10)]))
    # The trainer rotates step 10 away and writes step 20.
    second = write_checkpoint(local, 20)
    for path in (local / CHECKPOINTS_DIR / f"{PREFIX}10").iterdir():
        path.unlink()
    (local / CHECKPOINTS_DIR / f"{PREFIX}10").rmdir()

    with caplog.at_level(logging.ERROR, logger="worker.staging"):
        outputs.publish(Writes(checkpoints=[second]))  # must not raise
    stored = store.list_keys(f"{KEY}/{CHECKPOINTS_DIR}")
    assert any(f"{PREFIX}20/" in key for key in stored), "the new checkpoint is stored"
    assert any(f"{PREFIX}10/" in key for key in stored), "the refused one is still there"
    assert "AccessDenied" in caplog.text and f"{PREFIX}10" in caplog.text

    store.refusing = False
    third = write_checkpoint(local, 30)
    outputs.publish(Writes(checkpoints=[third]))
    stored = store.list_keys(f"{KEY}/{CHECKPOINTS_DIR}")
    assert not any(f"{PREFIX}10/" in key for key in stored), "pruned once the store lets it"

"""A job's folders on the worker. The trainer reads and writes plain local folders; this module puts them
where it can (the storage folders themselves when storage is a local directory, no copy) or else makes
them local: the dataset from the size-bounded cache, the output folder under data_dir/work, seeded with
the newest complete checkpoint in the object store so a job resumes on any host.

`JobOutputs.publish` uploads what the trainer reported before the recorder records its rows: checkpoint
folders with `state.json` last (a stored checkpoint without it is not complete and never restored), and
checkpoints the trainer has rotated away are deleted from the store, marker first.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.settings import Settings
from core.storage import InvalidStorageKey, Storage
from trainer.checkpoints import CHECKPOINTS_DIR, PREFIX, STATE_FILE, complete_checkpoints
from worker.dataset_cache import DatasetCache
from worker.translate import Writes

log = logging.getLogger(__name__)


def dataset_cache(settings: Settings) -> DatasetCache:
    return DatasetCache(settings.cache_dir / "datasets", settings.worker_cache_bytes)


def local_dirs(
    storage: Storage, settings: Settings, *, dataset_key: str, output_key: str
) -> tuple[Path, Path]:
    """Where the trainer finds the dataset and writes its outputs (staged by `staged_inputs`)."""
    dataset_dir = storage.local_dir(dataset_key) or dataset_cache(settings).entry(dataset_key)
    output_dir = storage.local_dir(output_key) or settings.work_dir / output_key
    return dataset_dir, output_dir


class JobOutputs:
    """The output folder of one job (`key` in storage, `local_dir` on this machine)."""

    def __init__(self, storage: Storage, key: str, local_dir: Path) -> None:
        self.storage, self.key, self.local_dir = storage, key, local_dir
        # With a local storage directory the trainer writes in place: nothing to upload.
        self.remote = storage.local_dir(key) is None

    def key_of(self, path: Path) -> str:
        """The storage key of a file or folder the trainer wrote under `local_dir`."""
        try:
            relative = Path(path).resolve().relative_to(self.local_dir.resolve())
        except ValueError:
            raise InvalidStorageKey(
                f"{path} is not inside the job's output folder {self.local_dir}"
            ) from None
        return f"{self.key}/{relative.as_posix()}"

    def publish(self, writes: Writes) -> None:
        """Upload the checkpoints, samples and adapters of `writes` (idempotent: a retried flush uploads
        them again), then delete stored checkpoints the trainer no longer keeps."""
        if not self.remote:
            return
        for checkpoint in writes.checkpoints:
            folder = self._local(checkpoint.storage_key)
            if (folder / STATE_FILE).is_file():  # else already rotated away: nothing to keep
                self.storage.put_tree(checkpoint.storage_key, folder, last=STATE_FILE)
        for key in [s.storage_key for s in writes.samples] + [a.storage_key for a in writes.artifacts]:
            with self._local(key).open("rb") as stream:
                self.storage.write_stream(key, stream)
        if writes.checkpoints:
            self._prune_checkpoints()

    def restore_checkpoint(self) -> int | None:
        """Download the newest complete stored checkpoint into `local_dir` unless it is there already;
        returns its step (None when there is none)."""
        if not self.remote:
            return None
        stored = self._stored_checkpoints()
        if not stored:
            return None
        step, name = max(stored)
        target = self.local_dir / CHECKPOINTS_DIR / name
        if not (target / STATE_FILE).is_file():
            # Fetched into a `.tmp-` folder that the trainer removes if we die halfway, then renamed.
            staging = self.local_dir / CHECKPOINTS_DIR / f".tmp-restore-{name}"
            shutil.rmtree(staging, ignore_errors=True)
            self.storage.fetch_tree(f"{self.key}/{CHECKPOINTS_DIR}/{name}", staging)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
            log.info("restored checkpoint %s of %s from storage", name, self.key)
        return step

    def discard_local(self) -> None:
        """Remove the local copy once everything is stored."""
        if self.remote:
            shutil.rmtree(self.local_dir, ignore_errors=True)

    def _local(self, key: str) -> Path:
        return self.local_dir.joinpath(*key.removeprefix(self.key + "/").split("/"))

    def _stored_checkpoints(self) -> list[tuple[int, str]]:
        """(step, folder name) of every stored checkpoint whose marker is stored."""
        found = []
        for key in self.storage.list_keys(f"{self.key}/{CHECKPOINTS_DIR}"):
            name, _, rest = key.removeprefix(f"{self.key}/{CHECKPOINTS_DIR}/").partition("/")
            if rest == STATE_FILE and name.startswith(PREFIX):
                found.append((int(name.removeprefix(PREFIX)), name))
        return found

    def _prune_checkpoints(self) -> None:
        root = f"{self.key}/{CHECKPOINTS_DIR}"
        kept = {path.name for _, path in complete_checkpoints(self.local_dir)}
        stored = {k.removeprefix(root + "/").split("/")[0] for k in self.storage.list_keys(root)}
        for name in sorted(stored - kept):
            self.storage.delete_tree(f"{root}/{name}/{STATE_FILE}")  # unmarked first: never restored
            self.storage.delete_tree(f"{root}/{name}")


@contextmanager
def staged_inputs(
    storage: Storage, settings: Settings, outputs: JobOutputs, dataset_key: str
) -> Iterator[None]:
    """While inside: the dataset is at its local folder (held in the cache) and the output folder holds
    the newest stored checkpoint."""
    if storage.local_dir(dataset_key) is not None:
        yield
        return
    with dataset_cache(settings).lease(storage, dataset_key):
        outputs.restore_checkpoint()
        yield

"""A job's folders on the worker. The trainer reads and writes plain local folders; this module puts them
where it can (the storage folders themselves when storage is a local directory, no copy) or else makes
them local: the dataset from the size-bounded cache, the output folder under data_dir/work, seeded with
the newest complete checkpoint in the object store so a job resumes on any host.

`JobOutputs.publish` uploads what the trainer reported before the recorder records its rows: checkpoint
folders with `state.json` last (a stored checkpoint without it is not complete and never restored), and
checkpoints the trainer has rotated away are deleted from the store, marker first.

The images the base model draws to complete a targets or avoid dataset (its folders under generated/, see
trainer.completion) are shared through the store the same way: `share_generated` uploads a completed
folder beside the dataset, manifest last, and `fetch_generated` brings the complete ones a cached copy
lacks into it, so no host draws them again.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.db import Database
from core.models import FINISHED_STATUSES
from core.repositories import jobs as job_repo
from core.settings import Settings
from core.storage import InvalidStorageKey, Storage, StorageDeleteError, tree_files
from trainer.checkpoints import CHECKPOINTS_DIR, PREFIX, STATE_FILE, complete_checkpoints
from trainer.dataset_format import GENERATED_DIR, MANIFEST_FILE
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
        self._uploaded: set[str] = set()  # keys stored by this run: a retried flush skips them

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
        """Upload the checkpoints, samples and adapters of `writes`, then delete stored checkpoints the
        trainer no longer keeps. A retried flush (its rows refused by a database that is down) calls this
        again with the same writes: what this run has stored already is not uploaded again."""
        if not self.remote:
            return
        for checkpoint in writes.checkpoints:
            folder = self._local(checkpoint.storage_key)
            if checkpoint.storage_key in self._uploaded or not (folder / STATE_FILE).is_file():
                continue  # stored already, or already rotated away: nothing to keep
            self.storage.put_tree(checkpoint.storage_key, folder, last=STATE_FILE)
            self._uploaded.add(checkpoint.storage_key)
        for key in [s.storage_key for s in writes.samples] + [a.storage_key for a in writes.artifacts]:
            if key in self._uploaded:
                continue
            with self._local(key).open("rb") as stream:
                self.storage.write_stream(key, stream)
            self._uploaded.add(key)
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
            try:
                self.storage.delete_tree(f"{root}/{name}/{STATE_FILE}")  # unmarked first: never restored
                self.storage.delete_tree(f"{root}/{name}")
            except StorageDeleteError as refused:
                # A stale checkpoint costs storage, not correctness (the newest one is what resumes), so
                # the flush that stored the new one goes on; the next prune lists and tries it again.
                log.error("could not prune stored checkpoint %s/%s: %s", root, name, refused)


def share_generated(storage: Storage, dataset_key: str, dataset_dir: Path, pairs_dir: Path) -> None:
    """Upload `pairs_dir`, the folder `complete_dataset` returned for the cached dataset at `dataset_dir`,
    to the same relative place under `dataset_key`, unless it is the dataset itself (a pairs dataset),
    storage is a local directory (the folder is written there in place) or the store holds its manifest
    already (another host uploaded it, or this copy came from there).

    The manifest goes last, so a half-uploaded folder is only partial progress to whoever fetches it (its
    drawn images are kept, the rest drawn). The uploaded images, hard-linked into the folder, stay out
    (`shared_files`): the store has them as the dataset's own files. Best effort: a failure is logged and
    the job trains on its local folder all the same (the next host draws the images again).
    """
    if storage.local_dir(dataset_key) is not None or pairs_dir == dataset_dir:
        return
    from trainer.completion import shared_files  # loaded already: the folder was just completed

    key = f"{dataset_key}/{pairs_dir.relative_to(dataset_dir).as_posix()}"
    try:
        if storage.exists(f"{key}/{MANIFEST_FILE}"):
            return
        for path in shared_files(dataset_dir, pairs_dir):
            with path.open("rb") as stream:
                storage.write_stream(f"{key}/{path.relative_to(pairs_dir).as_posix()}", stream)
    except Exception:  # boto3's errors or OSError: nothing the job depends on
        log.warning(
            "could not store the drawn images %s; other hosts will draw them again", key, exc_info=True
        )
    else:
        log.info("stored the drawn images %s for other hosts", key)


def fetch_generated(storage: Storage, dataset_key: str, dataset_dir: Path) -> None:
    """Fetch into the cached dataset at `dataset_dir` every folder under generated/ whose manifest is in
    the store but not here (uploaded by another host after this copy was cached).

    Other worker processes may use the same cached copy meanwhile, even draw into a partial folder of the
    same name: each file is fetched beside the folder, then renamed into it whole, the manifest last, so
    they only ever see whole files and, once the manifest is there, a complete folder. Best effort: a
    failure is logged and the job draws what it lacks.
    """
    root = f"{dataset_key}/{GENERATED_DIR}"
    fetched = []
    try:
        for name in _stored_generated(storage, root):
            if not (dataset_dir / GENERATED_DIR / name / MANIFEST_FILE).is_file():
                _fetch_into(storage, f"{root}/{name}", dataset_dir / GENERATED_DIR / name)
                fetched.append(name)
    except Exception:  # boto3's errors or OSError: the job can still draw the images itself
        log.warning("could not fetch the drawn images of %s", dataset_key, exc_info=True)
    if fetched:
        log.info("fetched the drawn images %s of %s from storage", fetched, dataset_key)


def _stored_generated(storage: Storage, root: str) -> list[str]:
    """Names of the folders under `root` whose manifest is stored (complete)."""
    names = []
    for key in storage.list_keys(root):
        name, _, rest = key.removeprefix(root + "/").partition("/")
        if rest == MANIFEST_FILE:
            names.append(name)
    return names


def _fetch_into(storage: Storage, key: str, folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".fetch-{folder.name}."))
    try:
        storage.fetch_tree(key, staging)
        for path in tree_files(staging, last=MANIFEST_FILE):
            target = folder / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def staged_inputs(
    storage: Storage, settings: Settings, outputs: JobOutputs, dataset_key: str
) -> Iterator[None]:
    """While inside: the dataset is at its local folder (held in the cache, with every complete folder of
    drawn images the store has) and the output folder holds the newest stored checkpoint."""
    if storage.local_dir(dataset_key) is not None:
        yield
        return
    with dataset_cache(settings).lease(storage, dataset_key) as dataset_dir:
        fetch_generated(storage, dataset_key, dataset_dir)
        outputs.restore_checkpoint()
        yield


def sweep_work_dir(db: Database, work_dir: Path) -> list[Path]:
    """Remove the local output copies (`work_dir/tenants/*/jobs/<job>`) of jobs that ended, or no longer
    exist, without their worker cleaning up: it was killed, its host was lost, or another worker took
    the job over. Kept: jobs still queued or running (a resume on this host starts from them), and a
    job that failed with `outputs_not_stored`, whose adapter may exist nowhere else. Returns what went."""
    folders = [f for f in work_dir.glob("tenants/*/jobs/*") if f.is_dir()]
    if not folders:
        return []
    with db.session_scope() as session:
        endings = job_repo.endings(session, [f.name for f in folders])
    removed = []
    for folder in folders:
        ending = endings.get(folder.name)  # None: the job no longer exists
        if ending is None or (ending[0] in FINISHED_STATUSES and ending[1] != "outputs_not_stored"):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    if removed:
        log.info("removed the local outputs of %d ended jobs from %s", len(removed), work_dir)
    return removed

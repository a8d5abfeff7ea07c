"""With an object store, the images the base model draws for a targets dataset are stored beside the
dataset: a job on another host, or on a host whose cached copy of the dataset is older than them, trains
on them without drawing any."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from api.services.ingest import ingest_upload
from core.db import Database
from core.models import Dataset
from core.settings import Settings
from core.storage import Storage, build_storage
from tests.support.events import events_of, progress
from tests.support.factories import create_dataset, create_tenant
from tests.support.targets import NUM_TARGETS, job_on, targets_upload
from tests.support.worker_hosts import host
from trainer.dataset_format import MANIFEST_FILE
from worker.context import WorkerContext
from worker.runner import run_job
from worker.staging import dataset_cache, fetch_generated

pytestmark = pytest.mark.parametrize(
    "storage_backend", [pytest.param("s3", marks=pytest.mark.s3)], indirect=True
)
DRAWN = {f"images/{index:06d}_rejected.png" for index in range(NUM_TARGETS)}


@pytest.fixture
def stored_targets(session: Session, worker_settings: Settings, tmp_path: Path) -> Dataset:
    """A targets dataset as the API stores it: ingested on its disk, then uploaded, manifest last."""
    dataset = create_dataset(session, tenant_id=create_tenant(session).id, num_pairs=NUM_TARGETS)
    upload = targets_upload(tmp_path / "upload.zip", "targets")
    ingest_upload(upload, upload.name, tmp_path / "ingested", kind="targets")
    build_storage(worker_settings).put_tree(dataset.storage_key, tmp_path / "ingested", last=MANIFEST_FILE)
    session.commit()
    return dataset


def stored_generated(storage: Storage, dataset: Dataset) -> dict[str, set[str]]:
    """The stored files of each folder under the dataset's generated/, by folder name."""
    root = f"{dataset.storage_key}/generated/"
    folders: dict[str, set[str]] = {}
    for key in storage.list_keys(root.rstrip("/")):
        name, _, rest = key.removeprefix(root).partition("/")
        folders.setdefault(name, set()).add(rest)
    return folders


def assert_trains_without_drawing(ctx: WorkerContext, session: Session, dataset: Dataset) -> Path:
    """Run a job on `dataset` on host `ctx`; returns the folder of pairs it trained on in its cache."""
    job = job_on(session, dataset)
    assert run_job(job.id, ctx) == "succeeded"
    assert progress(session, job.id) == [(NUM_TARGETS, 0, NUM_TARGETS)]
    [started] = events_of(session, job.id, "started")
    assert started.data["num_train_pairs"] == NUM_TARGETS
    cached = dataset_cache(ctx.settings).entry(dataset.storage_key)
    [folder] = (cached / "generated").iterdir()
    for index in range(NUM_TARGETS):
        # The uploaded side is the cached dataset's own file, linked in, not a second download.
        uploaded = f"{index:06d}_chosen.png"
        assert os.path.samefile(folder / "images" / uploaded, cached / "images" / uploaded)
    return folder


def test_a_second_host_trains_on_the_images_the_first_one_drew_without_drawing_any(
    worker_settings: Settings,
    database: Database,
    session: Session,
    stored_targets: Dataset,
    tmp_path: Path,
) -> None:
    first = host(worker_settings, database, tmp_path / "host-a", "host-a")
    job = job_on(session, stored_targets)
    assert run_job(job.id, first) == "succeeded"
    assert progress(session, job.id)[-1] == (NUM_TARGETS, NUM_TARGETS, 0)
    shutil.rmtree(tmp_path / "host-a")  # the first machine is gone, with its cached copy

    # Stored once: the drawn side, pairs, record and manifest; the uploaded images only as the dataset's.
    [(name, files)] = stored_generated(first.storage, stored_targets).items()
    assert files == {MANIFEST_FILE, "pairs.jsonl", "generation.json", *DRAWN}

    second = host(worker_settings, database, tmp_path / "host-b", "host-b")
    folder = assert_trains_without_drawing(second, session, stored_targets)
    assert folder.name == name
    for drawn in DRAWN:
        with second.storage.open_read(f"{stored_targets.storage_key}/generated/{name}/{drawn}") as stored:
            assert (folder / drawn).read_bytes() == stored.read()


def test_a_host_whose_cached_copy_predates_the_drawing_fetches_the_images(
    worker_settings: Settings,
    database: Database,
    session: Session,
    stored_targets: Dataset,
    tmp_path: Path,
) -> None:
    second = host(worker_settings, database, tmp_path / "host-b", "host-b")
    with dataset_cache(second.settings).lease(second.storage, stored_targets.storage_key) as cached:
        assert not (cached / "generated").exists()  # cached for an earlier job, before any drawing
    first = host(worker_settings, database, tmp_path / "host-a", "host-a")
    assert run_job(job_on(session, stored_targets).id, first) == "succeeded"

    folder = assert_trains_without_drawing(second, session, stored_targets)
    assert folder.parent.parent == cached  # the same cached copy, with the folder fetched into it


def test_only_complete_stored_folders_are_fetched_over_a_partial_local_one(
    storage: Storage, tmp_path: Path
) -> None:
    key = "tenants/t/datasets/ds"
    complete, half_uploaded = tmp_path / "complete", tmp_path / "half"
    for folder in (complete, half_uploaded):
        (folder / "images").mkdir(parents=True)
        (folder / "images" / "000000_rejected.png").write_bytes(b"stored image")
        (folder / "pairs.jsonl").write_text("{}\n")
    (complete / MANIFEST_FILE).write_text("{}")
    storage.put_tree(f"{key}/generated/aaaa", complete, last=MANIFEST_FILE)
    storage.put_tree(f"{key}/generated/bbbb", half_uploaded)
    # This host's copy: a folder it was drawing into (one image so far) when the other host finished.
    cached = tmp_path / "cached"
    (cached / "generated" / "aaaa" / "images").mkdir(parents=True)
    (cached / "generated" / "aaaa" / "images" / "000000_rejected.png").write_bytes(b"drawn here")
    (cached / "generated" / "aaaa" / "images" / "000001_rejected.png").write_bytes(b"drawn here too")

    fetch_generated(storage, key, cached)

    assert sorted(p.name for p in (cached / "generated").iterdir()) == ["aaaa"]
    fetched = cached / "generated" / "aaaa"
    assert (fetched / MANIFEST_FILE).read_text() == "{}"
    assert (fetched / "images" / "000000_rejected.png").read_bytes() == b"stored image"
    assert (fetched / "images" / "000001_rejected.png").read_bytes() == b"drawn here too"

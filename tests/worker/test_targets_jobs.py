"""Jobs on targets and avoid datasets, run by the real runner on a real database and tiny model: the worker
draws each pair's missing image with the base model once, and later jobs train on the same images."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.orm import Session

from api.services.ingest import ingest_upload
from core.models import Dataset, Job, JobEvent
from core.repositories import events as event_repo
from core.repositories import jobs as job_repo
from tests.conftest import create_dataset, create_job, create_tenant
from tests.trainer.test_completion import base_model_image, file_states, pixels
from tests.worker.conftest import FAST_SPEC
from trainer.completion import GENERATION_RECORD
from trainer.dataset_format import DatasetKind, read_pairs
from trainer.synthetic.demo_data import demo_pairs
from worker.context import WorkerContext
from worker.runner import run_job

NUM_TARGETS = 4
AVOID_PROMPT = "a small square at the top left, flat illustration"
SPEC = {**FAST_SPEC, "generation": {"num_inference_steps": 2}}


def targets_upload(path: Path, kind: DatasetKind) -> Path:
    """A zip a user would upload: pairs.jsonl of (prompt, image[, generation_prompt]) and the images."""
    rows = []
    with zipfile.ZipFile(path, "w") as archive:
        for index, pair in enumerate(demo_pairs(num_pairs=NUM_TARGETS, resolution=32, seed=5)):
            archive.writestr(f"img/{index}.png", pair.chosen)
            row = {"prompt": pair.prompt, "image": f"img/{index}.png"}
            rows.append(row | ({"generation_prompt": AVOID_PROMPT} if kind == "avoid" else {}))
        archive.writestr("pairs.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def one_sided_dataset(
    session: Session, ctx: WorkerContext, tmp_path: Path
) -> Callable[[DatasetKind], Dataset]:
    """A committed dataset row whose files came through the real upload ingest."""

    def make(kind: DatasetKind) -> Dataset:
        dataset = create_dataset(session, tenant_id=create_tenant(session).id, num_pairs=NUM_TARGETS)
        upload = targets_upload(tmp_path / f"{dataset.id}.zip", kind)
        ingest_upload(upload, upload.name, ctx.storage.local_path(dataset.storage_key), kind=kind)
        session.commit()
        return dataset

    return make


def job_on(session: Session, dataset: Dataset) -> Job:
    job = create_job(
        session,
        tenant_id=dataset.tenant_id,
        dataset_id=dataset.id,
        spec=SPEC,
        total_steps=SPEC["max_train_steps"],
    )
    session.commit()
    return job


def events_of(session: Session, job_id: str, type_: str) -> list[JobEvent]:
    return [
        e for e in event_repo.list_events(session, job_id, after=None, limit=500).items if e.type == type_
    ]


def progress(session: Session, job_id: str) -> list[tuple[Any, ...]]:
    """(ready, generated, reused) of each preparing event."""
    return [
        (e.data["ready"], e.data["generated"], e.data["reused"])
        for e in events_of(session, job_id, "preparing")
    ]


def generated_folder(ctx: WorkerContext, dataset: Dataset) -> Path:
    [folder] = (ctx.storage.local_path(dataset.storage_key) / "generated").iterdir()
    return folder


def test_targets_job_trains_on_a_pair_per_target_with_the_base_models_image_as_rejected(
    ctx: WorkerContext, session: Session, one_sided_dataset: Callable[[DatasetKind], Dataset], tiny_sd: Path
) -> None:
    dataset = one_sided_dataset("targets")
    job = job_on(session, dataset)
    assert run_job(job.id, ctx) == "succeeded"

    assert progress(session, job.id)[-1] == (NUM_TARGETS, NUM_TARGETS, 0)
    [started] = events_of(session, job.id, "started")
    assert started.data["num_train_pairs"] == NUM_TARGETS
    folder = generated_folder(ctx, dataset)
    seeds = [entry["seed"] for entry in json.loads((folder / GENERATION_RECORD).read_text())["pairs"]]
    uploads = list(demo_pairs(num_pairs=NUM_TARGETS, resolution=32, seed=5))
    for pair, upload, seed in zip(read_pairs(folder), uploads, seeds, strict=True):
        assert pair.prompt == upload.prompt and (folder / pair.chosen).read_bytes() == upload.chosen
        drawn = base_model_image(tiny_sd, upload.prompt, seed=seed)
        assert np.abs(pixels(folder / pair.rejected) - drawn).max() <= 1


def test_avoid_job_trains_against_the_uploaded_images(
    ctx: WorkerContext, session: Session, one_sided_dataset: Callable[[DatasetKind], Dataset], tiny_sd: Path
) -> None:
    dataset = one_sided_dataset("avoid")
    job = job_on(session, dataset)
    assert run_job(job.id, ctx) == "succeeded"

    folder = generated_folder(ctx, dataset)
    seeds = [entry["seed"] for entry in json.loads((folder / GENERATION_RECORD).read_text())["pairs"]]
    uploads = list(demo_pairs(num_pairs=NUM_TARGETS, resolution=32, seed=5))
    for pair, upload, seed in zip(read_pairs(folder), uploads, seeds, strict=True):
        assert (folder / pair.rejected).read_bytes() == upload.chosen
        drawn = base_model_image(tiny_sd, AVOID_PROMPT, seed=seed)
        assert np.abs(pixels(folder / pair.chosen) - drawn).max() <= 1
    assert "chosen images of the base model ready" in events_of(session, job.id, "preparing")[-1].message


def test_second_job_on_the_same_dataset_and_base_model_reuses_the_drawn_images(
    ctx: WorkerContext, session: Session, one_sided_dataset: Callable[[DatasetKind], Dataset]
) -> None:
    dataset = one_sided_dataset("targets")
    first = job_on(session, dataset)
    assert run_job(first.id, ctx) == "succeeded"
    folder = generated_folder(ctx, dataset)
    before = file_states(folder)

    second = job_on(session, dataset)
    assert run_job(second.id, ctx) == "succeeded"
    assert progress(session, second.id) == [(NUM_TARGETS, 0, NUM_TARGETS)]
    assert generated_folder(ctx, dataset) == folder and file_states(folder) == before


def test_job_after_a_worker_died_while_drawing_draws_only_what_is_missing(
    ctx: WorkerContext, session: Session, one_sided_dataset: Callable[[DatasetKind], Dataset]
) -> None:
    dataset = one_sided_dataset("targets")
    assert run_job(job_on(session, dataset).id, ctx) == "succeeded"
    folder = generated_folder(ctx, dataset)
    complete = file_states(folder)
    # What a worker killed after drawing two of the four images leaves: those two, and no manifest.
    (folder / "manifest.json").unlink()
    for name in ("000002_rejected.png", "000003_rejected.png"):
        (folder / "images" / name).unlink()

    job = job_on(session, dataset)
    assert run_job(job.id, ctx) == "succeeded"
    assert progress(session, job.id)[0] == (2, 0, 2) and progress(session, job.id)[-1] == (NUM_TARGETS, 2, 2)
    redrawn = file_states(folder)
    assert redrawn["000000_rejected.png"] == complete["000000_rejected.png"]
    assert redrawn["000003_rejected.png"][1] == complete["000003_rejected.png"][1]  # same bytes, drawn anew


def test_targets_job_whose_image_is_gone_fails_naming_the_row(
    ctx: WorkerContext, session: Session, one_sided_dataset: Callable[[DatasetKind], Dataset]
) -> None:
    dataset = one_sided_dataset("targets")
    (ctx.storage.local_path(dataset.storage_key) / "images" / "000001_chosen.png").unlink()
    job = job_on(session, dataset)
    assert run_job(job.id, ctx) == "failed"

    session.expire_all()
    failed = job_repo.get_job_any_tenant(session, job.id)
    assert failed is not None and failed.error_code == "invalid_dataset"
    assert "row 1, field image" in (failed.error_message or "")

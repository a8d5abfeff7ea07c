"""Jobs on targets and avoid datasets, run by the real runner on a real database and tiny model: the worker
draws each pair's missing image with the base model once, and later jobs train on the same images."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from core.models import Dataset
from core.repositories import jobs as job_repo
from tests.support.events import events_of, progress
from tests.support.images import base_model_image, file_states, pixels
from tests.support.targets import AVOID_PROMPT, NUM_TARGETS, generated_folder, job_on
from trainer.completion import GENERATION_RECORD
from trainer.dataset_format import DatasetKind, read_pairs
from trainer.synthetic.demo_data import demo_pairs
from worker.context import WorkerContext
from worker.runner import run_job


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

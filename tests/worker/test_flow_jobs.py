"""A flow-matching model (the tiny FLUX) through the worker, on SQLite and PostgreSQL: cancel, and a
targets dataset whose rejected side FLUX draws (tests/worker/test_family_jobs.py runs a job of every
family)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from PIL import Image
from sqlalchemy.orm import Session

from core.models import Dataset, Job
from core.settings import Settings
from tests.support.factories import create_dataset, create_job, create_tenant, store_demo_dataset
from tests.support.processes import cancel_once_training
from tests.support.specs import FAST_SPEC
from tests.support.targets import NUM_TARGETS, generated_folder
from trainer.dataset_format import read_pairs
from trainer.synthetic.demo_data import demo_pairs
from worker.context import WorkerContext
from worker.runner import run_job

FLUX_SPEC: dict[str, Any] = {**FAST_SPEC, "base_model": "tiny-flux", "eval_fraction": 0.34}


@pytest.fixture
def worker_settings(settings: Settings, tiny_sd: Path, tiny_flux: Path) -> Settings:
    return settings.model_copy(update={"base_models": {"tiny-sd": str(tiny_sd), "tiny-flux": str(tiny_flux)}})


def flux_job(
    session: Session, ctx: WorkerContext, tmp_path: Path, *, dataset: Dataset | None = None, **spec: Any
) -> Job:
    """A committed queued job on tiny-flux (on a new 6-pair demo dataset unless given one)."""
    if dataset is None:
        dataset = create_dataset(session, tenant_id=create_tenant(session).id, num_pairs=6)
        store_demo_dataset(ctx.storage, dataset.storage_key, tmp_path, num_pairs=6, resolution=32)
    full = {**FLUX_SPEC, **spec}
    job = create_job(
        session,
        tenant_id=dataset.tenant_id,
        dataset_id=dataset.id,
        base_model="tiny-flux",
        spec=full,
    )
    session.commit()
    return job


def test_cancelling_a_running_flux_job_ends_it_cancelled(
    ctx: WorkerContext, session: Session, tmp_path: Path
) -> None:
    job = flux_job(
        session, ctx, tmp_path, max_train_steps=10_000, checkpoint_every_n_steps=10_000, validation={}
    )
    canceller = cancel_once_training(ctx.db, job.id, timeout_s=120)
    assert run_job(job.id, ctx) == "cancelled"
    canceller.join()
    session.refresh(job)
    assert job.status == "cancelled" and 0 < job.step < 10_000


def test_a_targets_job_on_flux_trains_against_what_flux_draws(
    ctx: WorkerContext,
    session: Session,
    tmp_path: Path,
    tiny_flux: Path,
    one_sided_dataset: Callable[[str], Dataset],
) -> None:
    dataset = one_sided_dataset("targets")
    job = flux_job(
        session, ctx, tmp_path, dataset=dataset, eval_fraction=0.0, generation={"num_inference_steps": 2}
    )
    assert run_job(job.id, ctx) == "succeeded"

    folder = generated_folder(ctx, dataset)
    pipeline = FluxPipeline.from_pretrained(tiny_flux)
    uploads = list(demo_pairs(num_pairs=NUM_TARGETS, resolution=32, seed=5))
    seeds = [entry["seed"] for entry in json.loads((folder / "generation.json").read_text())["pairs"]]
    for pair, upload, seed in zip(read_pairs(folder), uploads, seeds, strict=True):
        assert (folder / pair.chosen).read_bytes() == upload.chosen
        drawn = pipeline(
            upload.prompt,
            num_inference_steps=2,
            guidance_scale=5.0,
            height=32,
            width=32,
            generator=torch.Generator("cpu").manual_seed(seed),
        ).images[0]
        ours = np.asarray(
            Image.open(io.BytesIO((folder / pair.rejected).read_bytes())).convert("RGB"), np.int16
        )
        assert np.abs(ours - np.asarray(drawn, np.int16)).max() <= 1

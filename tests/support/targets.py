"""Targets and avoid datasets as the worker tests use them: the zip a user uploads (NUM_TARGETS demo
images), a job on one, and the folder the worker draws the missing images into."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from sqlalchemy.orm import Session

from core.models import Dataset, Job
from tests.support.factories import create_job
from tests.support.specs import FAST_SPEC
from trainer.dataset_format import DatasetKind
from trainer.synthetic.demo_data import demo_pairs
from worker.context import WorkerContext

NUM_TARGETS = 4
# What an avoid upload's rows ask the base model to draw instead.
AVOID_PROMPT = "a small square at the top left, flat illustration"
# FAST_SPEC, drawing each missing image in two steps.
TARGETS_SPEC = {**FAST_SPEC, "generation": {"num_inference_steps": 2}}


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


def job_on(session: Session, dataset: Dataset) -> Job:
    """A committed queued job of TARGETS_SPEC on `dataset`."""
    job = create_job(
        session,
        tenant_id=dataset.tenant_id,
        dataset_id=dataset.id,
        spec=TARGETS_SPEC,
    )
    session.commit()
    return job


def generated_folder(ctx: WorkerContext, dataset: Dataset) -> Path:
    """The one folder of drawn images in `dataset`'s local copy."""
    [folder] = (ctx.storage.local_path(dataset.storage_key) / "generated").iterdir()
    return folder

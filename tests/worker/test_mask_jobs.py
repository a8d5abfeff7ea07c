"""A masked dataset through the worker: the job fetches the masks with the images, trains on them and
logs a different chosen error than the same job on the same images without masks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy.orm import Session

from core.repositories import metrics as metric_repo
from tests.support.factories import create_dataset, create_job, create_tenant
from tests.support.specs import FAST_SPEC
from trainer.dataset_format import MANIFEST_FILE, DatasetWriter, EncodedImage
from worker.context import WorkerContext
from worker.runner import run_job


def _png(image: Image.Image) -> EncodedImage:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return EncodedImage(buffer.getvalue())


def _write(folder: Path, *, masked: bool) -> Path:
    """Four pairs of noise images; each masked to its left half when `masked`."""
    rng = np.random.default_rng(0)
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    with DatasetWriter(folder) as writer:
        for i in range(4):
            images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "RGB") for _ in "cr"]
            writer.add_pair(
                f"pair {i}",
                chosen=_png(images[0]),
                rejected=_png(images[1]),
                mask=_png(mask) if masked else None,
            )
    return folder


def _first_chosen_loss(session: Session, ctx: WorkerContext, tmp_path: Path, *, masked: bool) -> float:
    dataset = create_dataset(session, tenant_id=create_tenant(session).id, num_pairs=4)
    ctx.storage.put_tree(
        dataset.storage_key, _write(tmp_path / f"ds-{masked}", masked=masked), last=MANIFEST_FILE
    )
    spec = {**FAST_SPEC, "hflip": False}
    job = create_job(
        session,
        tenant_id=dataset.tenant_id,
        dataset_id=dataset.id,
        spec=spec,
    )
    session.commit()
    assert run_job(job.id, ctx) == "succeeded"
    series = metric_repo.metric_series(session, job.id)["chosen_loss"]
    return float(series[0][1])


def test_a_masked_dataset_trains_through_the_worker(
    ctx: WorkerContext, session: Session, tmp_path: Path
) -> None:
    masked = _first_chosen_loss(session, ctx, tmp_path, masked=True)
    plain = _first_chosen_loss(session, ctx, tmp_path, masked=False)
    assert np.isfinite(masked)
    assert abs(masked - plain) > 1e-4 * abs(plain)

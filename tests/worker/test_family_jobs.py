"""Every model family through the worker, on SQLite and PostgreSQL: a MaPO job on its tiny model ends
with validation images with and without the LoRA, held-out accuracy from step 0, and both adapter
formats stored, and the stored diffusers adapter loads into the family's own pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from diffusers import DiffusionPipeline
from sqlalchemy.orm import Session

from core.repositories import events as event_repo
from core.repositories import metrics as metric_repo
from core.repositories import outputs as output_repo
from core.settings import Settings
from tests.support.factories import create_dataset, create_job, create_tenant, store_demo_dataset
from tests.support.specs import FAST_SPEC
from worker.context import WorkerContext
from worker.runner import run_job


@pytest.fixture
def worker_settings(settings: Settings, family_name: str, tiny_model: Path) -> Settings:
    return settings.model_copy(update={"base_models": {f"tiny-{family_name}": str(tiny_model)}})


def _job_spec(family_name: str) -> dict[str, Any]:
    return {**FAST_SPEC, "base_model": f"tiny-{family_name}", "eval_fraction": 0.34}


def test_a_mapo_job_on_every_family_succeeds_with_samples_held_out_accuracy_and_both_adapters(
    ctx: WorkerContext, session: Session, tmp_path: Path, family_name: str, tiny_model: Path
) -> None:
    dataset = create_dataset(session, tenant_id=create_tenant(session).id, num_pairs=6)
    store_demo_dataset(ctx.storage, dataset.storage_key, tmp_path, num_pairs=6, resolution=32)
    spec = _job_spec(family_name)
    job = create_job(session, tenant_id=dataset.tenant_id, dataset_id=dataset.id, spec=spec)
    session.commit()
    assert run_job(job.id, ctx) == "succeeded"

    events = event_repo.list_events(session, job.id, after=None, limit=500).items
    [started] = [e for e in events if e.type == "started"]
    assert started.data["model_family"] == family_name
    samples = output_repo.list_samples(session, job.id)
    assert {(s.step, s.with_lora) for s in samples} == {(0, False), (4, True)}
    accuracy = metric_repo.metric_series(session, job.id)["heldout_accuracy"]
    assert [step for step, _ in accuracy] == [0, 4], "held-out accuracy from step 0 and at the end"
    stored = {fmt: output_repo.get_artifact(session, job.id, format=fmt) for fmt in ("diffusers", "kohya")}
    assert all(a is not None and len(a.sha256) == 64 for a in stored.values())

    adapter_dir = tmp_path / "downloaded"
    adapter_dir.mkdir()
    with ctx.storage.open_read(stored["diffusers"].storage_key) as stream:  # type: ignore[union-attr]
        (adapter_dir / "pytorch_lora_weights.safetensors").write_bytes(stream.read())
    pipeline = DiffusionPipeline.from_pretrained(str(tiny_model))
    pipeline.load_lora_weights(adapter_dir)
    assert pipeline.get_active_adapters()

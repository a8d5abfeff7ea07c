"""A job's request is stored once, as its TrainSpec dump: no column repeats a spec field, and every
TrainSpec field comes back from GET /v1/jobs/{id} as it was sent, where the job body puts it."""

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.schemas import TOP_LEVEL_SPEC_FIELDS, JobCreate, JobOut
from core.models import Job, Tenant
from tests.support.factories import auth_headers, create_dataset, create_tenant
from trainer.families import FAMILY_SPECIFIC_FIELDS
from trainer.spec import TrainSpec

# A value other than the default for each field the tiny SD base model takes; the family-specific fields
# (SD3/FLUX only) would be a 422 on it and keep their defaults.
NON_DEFAULTS: dict[str, Any] = {
    "method": "dpo",
    "resolution": 64,
    "train_batch_size": 2,
    "gradient_accumulation_steps": 3,
    "max_train_steps": 40,
    "learning_rate": 3e-4,
    "lr_scheduler": "cosine",
    "lr_warmup_steps": 4,
    "adam_beta1": 0.8,
    "adam_beta2": 0.99,
    "adam_weight_decay": 0.05,
    "adam_epsilon": 1e-6,
    "max_grad_norm": 2.0,
    "beta": 0.2,
    "gamma": 0.7,
    "margin_scale": 500.0,
    "beta_dpo": 2500.0,
    "lora_rank": 4,
    "lora_alpha": 8.0,
    "lora_dropout": 0.1,
    "lora_target_modules": ["to_q", "to_v"],
    "mixed_precision": "bf16",
    "gradient_checkpointing": True,
    "seed": 7,
    "checkpoint_every_n_steps": 10,
    "keep_checkpoints": 2,
    "validation": {
        "prompts": ["a watercolor fox"],
        "every_n_steps": 5,
        "num_inference_steps": 10,
        "guidance_scale": 3.0,
        "seed": 3,
    },
    "generation": {"num_inference_steps": 12, "guidance_scale": 4.0},
    "eval_fraction": 0.2,
    "eval_every_n_steps": 10,
    "random_crop": True,
    "hflip": False,
    "cache_latents": False,
}

# Where the job body carries a spec field, read from the request schema itself: at the top level if the
# body has a field of that name, else in `hyperparameters`.
TOP_LEVEL = frozenset(TrainSpec.model_fields) & frozenset(JobCreate.model_fields)


def _body(dataset_id: str, spec: TrainSpec) -> dict[str, Any]:
    dump = spec.model_dump(mode="json")
    top = {name: value for name, value in dump.items() if name in TOP_LEVEL}
    hyperparameters = {name: value for name, value in dump.items() if name not in TOP_LEVEL}
    return {"dataset_id": dataset_id, **top, "hyperparameters": hyperparameters}


def _posted_and_read(client: TestClient, session: Session, spec: TrainSpec) -> dict[str, Any]:
    tenant = create_tenant(session)
    dataset = create_dataset(session, tenant_id=tenant.id)
    session.commit()
    headers = auth_headers(session, session.get_one(Tenant, tenant.id))
    created = client.post("/v1/jobs", json=_body(dataset.id, spec), headers=headers)
    assert created.status_code == 201, created.text
    read = client.get(f"/v1/jobs/{created.json()['id']}", headers=headers)
    assert read.status_code == 200
    assert read.json() == created.json()
    body: dict[str, Any] = read.json()
    return body


def _spec_fields_of(job: dict[str, Any]) -> dict[str, Any]:
    """The TrainSpec fields of a job's JSON, each from the one place the API puts it."""
    top = {name: job[name] for name in TOP_LEVEL}
    assert not top.keys() & job["hyperparameters"].keys(), "a field is shown twice"
    return {**top, **job["hyperparameters"]}


def test_the_sample_values_differ_from_the_defaults() -> None:
    # Otherwise the round trip below could pass by reading defaults back.
    defaults = TrainSpec(base_model="tiny-sd").model_dump(mode="json")
    assert all(defaults[name] != value for name, value in NON_DEFAULTS.items())
    assert not NON_DEFAULTS.keys() & FAMILY_SPECIFIC_FIELDS


def test_every_train_spec_field_round_trips_through_post_and_get(
    client: TestClient, session: Session
) -> None:
    spec = TrainSpec(base_model="tiny-sd", **NON_DEFAULTS)
    job = _posted_and_read(client, session, spec)
    assert _spec_fields_of(job) == spec.model_dump(mode="json")


def test_a_job_with_defaults_shows_every_field_of_the_spec(client: TestClient, session: Session) -> None:
    spec = TrainSpec(base_model="tiny-sd")
    job = _posted_and_read(client, session, spec)
    assert _spec_fields_of(job) == spec.model_dump(mode="json")


def test_the_job_json_holds_the_spec_fields_at_the_top_level_that_the_body_takes_there() -> None:
    shown_at_top = frozenset(TrainSpec.model_fields) & frozenset(JobOut.model_fields)
    assert shown_at_top == TOP_LEVEL == TOP_LEVEL_SPEC_FIELDS
    assert {"base_model", "method", "validation", "seed"} == TOP_LEVEL, "the job's JSON is unchanged"


def test_no_column_of_a_job_repeats_a_spec_field() -> None:
    columns = set(Job.__table__.columns.keys())
    assert "spec" in columns
    assert not columns & set(TrainSpec.model_fields)

"""Base models: what the operator offers (MAPO_BASE_MODELS), each described from its own folder."""

from __future__ import annotations

from functools import lru_cache
from typing import get_args

from api.deps import AppContext
from api.errors import InvalidRequest
from api.schemas import BaseModelOut, JobCreate, ListResponse
from trainer.families import FAMILIES
from trainer.families.describe import ModelDescription, describe_model, model_folder
from trainer.spec import Method, SpecConflict


def list_base_models(context: AppContext) -> ListResponse[BaseModelOut]:
    """Every configured base model by name, with its family and what a job on it may ask."""
    models = context.settings.base_models
    return ListResponse[BaseModelOut](
        data=[base_model_out(name, _describe(location)) for name, location in sorted(models.items())],
        has_more=False,
    )


def base_model_out(name: str, description: ModelDescription | None) -> BaseModelOut:
    facts = None if description is None else FAMILIES[description.family]
    return BaseModelOut(
        name=name,
        family=None if facts is None else facts.name,
        objective=None if facts is None else facts.objective,
        prediction_type=None if description is None else description.prediction_type,
        native_resolution=None if description is None else description.native_resolution,
        methods=list(get_args(Method)),
        fields=[] if facts is None else sorted(facts.fields),
    )


def check_fields_apply(context: AppContext, body: JobCreate) -> None:
    """422 naming the first family-specific hyperparameter the job's base model does not take."""
    description = _describe(context.settings.base_model_location(body.base_model))
    if description is None:
        return
    try:
        body.to_spec().check_family(description.family)
    except SpecConflict as exc:
        raise InvalidRequest(str(exc), param=f"hyperparameters.{exc.field}") from exc


def _describe(location: str) -> ModelDescription | None:
    folder = model_folder(location)
    if folder is None:
        return None
    index = folder / "model_index.json"
    return _described(location, index.stat().st_mtime_ns if index.is_file() else 0)


@lru_cache(maxsize=256)
def _described(location: str, stamp: int) -> ModelDescription | None:
    """Cached per model_index.json's modification time, so a rebuilt folder is read again."""
    return describe_model(location)

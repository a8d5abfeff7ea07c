"""Job estimates: the plan of a job body (trainer/plan.py) on each class of the registered workers' devices,
and the `does_not_fit` refusal of a job that no registered worker can hold."""

from __future__ import annotations

from dataclasses import asdict
from itertools import groupby

from sqlalchemy.orm import Session

from api.deps import AppContext
from api.errors import InvalidRequest
from api.schemas import DeviceEstimateOut, EstimateOut, JobCreate, MemoryOut, RecipeOut
from api.services.datasets import require_dataset
from core.models import Tenant, Worker
from core.repositories import workers as worker_repo
from trainer.families.describe import model_folder
from trainer.plan import (
    BaseModelWeights,
    DeviceClass,
    GiB,
    MemoryEstimate,
    Plan,
    PlanUnavailableError,
    Recipe,
    device_class,
    plan,
    read_base_model,
    smallest_plan,
)
from trainer.spec import TrainSpec

MiB = 2**20
# A GPU of any size: the plan of a job with no registered worker to plan for.
ANY_GPU = DeviceClass("GPU", "cuda", None, None)


def estimate_job(session: Session, context: AppContext, tenant: Tenant, body: JobCreate) -> EstimateOut:
    """The estimate of `body` (422 `estimate_unavailable` where the base model's weights cannot be read;
    404 for a dataset that is missing or another tenant's, as creating the job would answer)."""
    require_dataset(session, tenant, body.dataset_id)
    spec, weights = _spec_and_weights(context, body)
    if weights is None:
        message = f"base_model {body.base_model!r} has no local safetensors folder to count its weights from"
        raise InvalidRequest(message, param="base_model", code="estimate_unavailable")
    planned = [
        (members, plan(spec, weights, _class_of(members[0])))
        for members in _candidate_classes(session, spec, _queue_of(context, body))
    ]
    devices = [_device_out(spec, context, members, p) for members, p in planned]
    best = _best_plan([p for _, p in planned]) or plan(spec, weights, ANY_GPU)
    smallest = smallest_plan(spec, weights, best.device)
    return EstimateOut(
        recipe=_recipe_out(best.recipe),
        memory=_memory_out(best.memory),
        devices=devices,
        workers=[worker for device in devices for worker in device.workers],
        smallest_recipe=_recipe_out(smallest.recipe),
        smallest_memory=_memory_out(smallest.memory),
    )


def check_fits(session: Session, context: AppContext, body: JobCreate, *, queue: str) -> None:
    """422 `does_not_fit` when the workers that could take the job all advertise their memory and the
    job's plan fits none of them; nothing when any could, or any is of unknown memory, or none exists."""
    spec, weights = _spec_and_weights(context, body)
    candidates = _candidate_classes(session, spec, queue)
    if weights is None or not candidates or any(m[0].gpu_memory_mb is None for m in candidates):
        return
    plans = [plan(spec, weights, _class_of(members[0])) for members in candidates]
    if any(p.fits for p in plans):
        return
    largest = max(plans, key=lambda p: p.device.memory_bytes or 0)
    smallest = smallest_plan(spec, weights, largest.device)
    raise InvalidRequest(_does_not_fit_message(largest, smallest), code="does_not_fit")


def _does_not_fit_message(largest: Plan, smallest: Plan) -> str:
    budget = largest.device.memory_bytes or 0
    message = (
        f"the job needs an estimated {_gib(largest.memory.peak_device)} of device memory "
        f"({_recipe_words(largest.recipe)}); the largest device of the workers that could take it, "
        f"{largest.device.name}, has {_gib(budget)}; the smallest recipe ({_recipe_words(smallest.recipe)}) "
        f"needs {_gib(smallest.memory.peak_device)}"
    )
    if smallest.fits:
        return message + " and fits: set those hyperparameters (or base_precision auto)"
    return message + " and does not fit either: lower train_batch_size or resolution"


def _spec_and_weights(context: AppContext, body: JobCreate) -> tuple[TrainSpec, BaseModelWeights | None]:
    if body.base_model not in context.settings.base_models:
        allowed = ", ".join(sorted(context.settings.base_models)) or "none configured"
        message = f"unknown base_model {body.base_model!r} (allowed: {allowed})"
        raise InvalidRequest(message, param="base_model", code="unknown_base_model")
    spec = body.to_spec()
    folder = model_folder(context.settings.base_model_location(body.base_model))
    if folder is None:
        return spec, None
    try:
        return spec, read_base_model(folder)
    except PlanUnavailableError:
        return spec, None


def _queue_of(context: AppContext, body: JobCreate) -> str:
    return body.queue if body.queue is not None else context.settings.default_queue


def _candidate_classes(session: Session, spec: TrainSpec, queue: str) -> list[list[Worker]]:
    """The workers that serve `queue` (not stopped) and have the job's `gpus`, grouped by device class
    and memory, largest memory first."""
    workers = [
        w
        for w in worker_repo.list_workers(session)
        if w.stopped_at is None and queue in w.queues and (w.device == "cpu" or w.gpu_count >= spec.gpus)
    ]

    def key(worker: Worker) -> tuple[int, str]:
        return (-(worker.gpu_memory_mb or 0), _class_of(worker).name)

    return [list(group) for _, group in groupby(sorted(workers, key=key), key=key)]


def _class_of(worker: Worker) -> DeviceClass:
    memory = None if worker.gpu_memory_mb is None else worker.gpu_memory_mb * MiB
    if worker.device == "cpu":
        return device_class(kind="cpu", gpu_model=None, memory_bytes=memory)
    return device_class(kind="cuda", gpu_model=worker.gpu_model, memory_bytes=memory)


def _device_out(
    spec: TrainSpec, context: AppContext, members: list[Worker], planned: Plan
) -> DeviceEstimateOut:
    price = context.settings.gpu_hour_prices.get(planned.device.name)
    cost = None
    if price is not None and planned.total_seconds is not None:
        cost = planned.total_seconds / 3600 * spec.gpus * price
    return DeviceEstimateOut(
        device_class=planned.device.name,
        device=planned.device.kind,
        gpu_memory_mb=members[0].gpu_memory_mb,
        recipe=_recipe_out(planned.recipe),
        memory=_memory_out(planned.memory),
        fits=planned.fits,
        step_seconds=planned.step_seconds,
        total_seconds=planned.total_seconds,
        gpu_hour_price=price,
        cost=cost,
        workers=[] if planned.fits is False else [w.id for w in members],
    )


def _best_plan(plans: list[Plan]) -> Plan | None:
    """The plan on the fastest class that can take the job (one of unknown speed last), if any can."""
    takers = [p for p in plans if p.fits is not False]
    if not takers:
        return None
    return min(takers, key=lambda p: p.step_seconds if p.step_seconds is not None else float("inf"))


def _recipe_out(recipe: Recipe) -> RecipeOut:
    return RecipeOut.model_validate(asdict(recipe))


def _memory_out(memory: MemoryEstimate) -> MemoryOut:
    return MemoryOut.model_validate({f"{name}_bytes": value for name, value in asdict(memory).items()})


def _recipe_words(recipe: Recipe) -> str:
    return (
        f"base_precision {recipe.base_precision}, text_encoder_precision {recipe.text_encoder_precision}, "
        f"gradient_checkpointing {str(recipe.gradient_checkpointing).lower()}, "
        f"train_batch_size {recipe.train_batch_size}, resolution {recipe.resolution}"
    )


def _gib(size: int) -> str:
    return f"{size / GiB:.1f} GiB"

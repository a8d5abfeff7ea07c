"""`base_precision: auto` resolved at load time against this process's own device, through the same planner
the API estimates with (trainer/plan.py): the least lossy precision whose plan fits the memory free now."""

from __future__ import annotations

import logging

import psutil
import torch

from trainer.families.describe import model_folder
from trainer.plan import (
    CUDA_RESERVED_BYTES,
    DeviceClass,
    PlanUnavailableError,
    device_class,
    plan,
    read_base_model,
)
from trainer.spec import TrainSpec

log = logging.getLogger(__name__)


def this_device(device: torch.device) -> DeviceClass:
    """`device` as the planner sees it, with the memory this process can still use: on CUDA the free
    memory (plus the context already spent, which the plan counts), on the CPU the available RAM plus
    this process's own RSS (its runtime, which the plan counts too)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        name = torch.cuda.get_device_name(device)
        return device_class(kind="cuda", gpu_model=name, memory_bytes=free + CUDA_RESERVED_BYTES)
    available = psutil.virtual_memory().available + psutil.Process().memory_info().rss
    return device_class(kind="cpu", gpu_model=None, memory_bytes=available)


def resolve_auto(spec: TrainSpec, device: torch.device) -> TrainSpec:
    """`spec` with `base_precision: auto` replaced by the plan's choice on `device` (nf4 when even that
    does not fit: the load then fails as it would have). Without a local folder to count the weights of,
    `auto` is the compute dtype, as if unset."""
    if spec.base_precision != "auto":
        return spec
    folder = model_folder(spec.base_model)
    try:
        if folder is None:
            raise PlanUnavailableError(f"{spec.base_model} is no local folder")
        chosen = plan(spec, read_base_model(folder), this_device(device))
    except PlanUnavailableError as exc:
        log.warning("base_precision auto: cannot plan (%s); loading in the compute dtype", exc)
        return spec.model_copy(update={"base_precision": None})
    log.info(
        "base_precision auto -> %s (estimated peak %.2f GiB of %.2f GiB)",
        chosen.recipe.base_precision,
        chosen.memory.peak_device / 2**30,
        (chosen.device.memory_bytes or 0) / 2**30,
    )
    return spec.model_copy(update={"base_precision": chosen.recipe.base_precision})

"""Loading a base model as its family: the family is read from the folder, never from its name, and its
`ModelFamily` class is found in the family's own module (`FamilyFacts.module`), not in a table here."""

from __future__ import annotations

import importlib
import inspect
from functools import cache
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

from trainer.device_plan import resolve_auto
from trainer.errors import ModelLoadError
from trainer.errors import PrecisionUnavailableError as PrecisionUnavailable
from trainer.families import FAMILIES, FamilyName, UnknownFamilyError, family_of_pipeline, read_family
from trainer.families.base import ModelFamily
from trainer.families.loading import Loading
from trainer.quantization import PrecisionUnavailableError, check_device, precision_of
from trainer.spec import TrainSpec


@cache
def family_class(name: FamilyName) -> type[ModelFamily]:
    """The one concrete ModelFamily subclass that `name`'s module defines for it."""
    module = importlib.import_module(FAMILIES[name].module)
    found = [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, ModelFamily)
        and cls.__module__ == module.__name__
        and not inspect.isabstract(cls)
        and getattr(cls, "name", None) == name
    ]
    if len(found) != 1:
        raise TypeError(f"{module.__name__} must define one ModelFamily named {name!r}, found {found}")
    return found[0]


def family_of(source: str) -> FamilyName:
    """The family of a local diffusers folder or a hub id (whose model_index.json is fetched or cached)."""
    try:
        if Path(source).is_dir():
            return read_family(Path(source))
        config = DiffusionPipeline.load_config(source)
        return family_of_pipeline(str(config["_class_name"]))
    except (UnknownFamilyError, OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot tell the model family of {source!r}: {exc}") from exc


def load_family(
    source: str,
    *,
    device: torch.device,
    weight_dtype: torch.dtype,
    options: dict[str, Any] | None = None,
    base_precision: str | None = None,
    text_encoder_precision: str | None = None,
) -> ModelFamily:
    """Load `source` frozen, in eval mode, on `device`: the denoiser and text encoders at the spec's
    `base_precision` / `text_encoder_precision` (None: `weight_dtype`; a quantized one computes in
    `weight_dtype`), the VAE in float32 (SDXL's VAE overflows in fp16)."""
    loading = Loading(
        source,
        device,
        denoiser=precision_of(base_precision, weight_dtype),
        text=precision_of(text_encoder_precision, weight_dtype),
    )
    check_device(loading.denoiser, device, field="base_precision")
    check_device(loading.text, device, field="text_encoder_precision")
    family = family_class(family_of(source)).load(loading, options=options or {})
    for module in (family.denoiser, family.vae, *family.text_encoders):
        module.requires_grad_(False)
        module.eval()
        if _device_of(module) != device:  # bitsandbytes' were loaded onto it (and refuse `.to`)
            module.to(device)
    return family


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def load_base(spec: TrainSpec, device: torch.device, compute_dtype: torch.dtype) -> ModelFamily:
    """The spec's base model on `device`, its frozen parts at the spec's precisions, computing in
    `compute_dtype` (`base_precision: auto` resolved against `device` by the job's plan)."""
    spec = resolve_auto(spec, device)
    try:
        return load_family(
            spec.base_model,
            device=device,
            weight_dtype=compute_dtype,
            options=spec.family_options(),
            base_precision=spec.base_precision,
            text_encoder_precision=spec.text_encoder_precision,
        )
    except PrecisionUnavailableError as exc:
        raise PrecisionUnavailable(str(exc)) from exc

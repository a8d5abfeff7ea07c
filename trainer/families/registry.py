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

from trainer.errors import ModelLoadError
from trainer.families import FAMILIES, FamilyName, UnknownFamilyError, family_of_pipeline, read_family
from trainer.families.base import ModelFamily


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
    source: str, *, device: torch.device, weight_dtype: torch.dtype, options: dict[str, Any] | None = None
) -> ModelFamily:
    """Load `source` frozen, in eval mode, on `device`: denoiser and text encoders in `weight_dtype`, the
    VAE in float32 (SDXL's VAE overflows in fp16)."""
    family = family_class(family_of(source)).load(source, weight_dtype=weight_dtype, options=options or {})
    for module in (family.denoiser, family.vae, *family.text_encoders):
        module.requires_grad_(False)
        module.eval()
        module.to(device)
    return family

"""Loading a base model as its family: the family is read from the folder, never from its name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

from trainer.errors import ModelLoadError
from trainer.families import FamilyName, UnknownFamilyError, family_of_pipeline, read_family
from trainer.families.base import ModelFamily
from trainer.families.flux import FluxFamily
from trainer.families.sd3 import SD3Family
from trainer.families.unet import SDFamily, SDXLFamily

FAMILY_CLASSES: dict[FamilyName, type[ModelFamily]] = {
    "sd": SDFamily,
    "sdxl": SDXLFamily,
    "sd3": SD3Family,
    "flux": FluxFamily,
}


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
    family = FAMILY_CLASSES[family_of(source)].load(source, weight_dtype=weight_dtype, options=options or {})
    for module in (family.denoiser, family.vae, *family.text_encoders):
        module.requires_grad_(False)
        module.eval()
        module.to(device)
    return family

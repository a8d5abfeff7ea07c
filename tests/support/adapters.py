"""A family's model with a non-zero LoRA, exported in both formats, for the tests that check that each
file loads into the family's pipeline (and, for the ComfyUI file, through diffusers' own converter)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.export import save_diffusers_lora, save_kohya_lora
from trainer.families.base import ModelFamily
from trainer.families.registry import load_family
from trainer.lora import attach_lora, trainable_parameters

ALPHA = 2.0


@dataclass(frozen=True)
class AdapterFiles:
    family: ModelFamily
    diffusers: Path
    comfyui: Path


def adapter_files(
    folder: Path, out: Path, *, targets: list[str] | None = None, seed: int = 3
) -> AdapterFiles:
    """The model at `folder` with a rank-4, alpha-2 LoRA of weights N(0, 0.3²) on `targets` (default: the
    family's), saved under `out` as the diffusers and the ComfyUI (kohya) file."""
    family = load_family(str(folder), device=torch.device("cpu"), weight_dtype=torch.float32)
    chosen = targets if targets is not None else list(family.default_lora_targets)
    config = attach_lora(family.denoiser, rank=4, alpha=ALPHA, dropout=0.0, targets=chosen)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in trainable_parameters(family.denoiser):
            param.normal_(std=0.3, generator=generator)
    return AdapterFiles(
        family,
        save_diffusers_lora(family.denoiser, config, family, out),
        save_kohya_lora(family.denoiser, family, ALPHA, out),
    )

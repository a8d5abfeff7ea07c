"""The floor's model and batch, as bench/trainer_step.py and bench/floor_variants.py both time it: the
configured model's denoiser with a rank-4 LoRA, in training mode, and 2B random latents (B = 2 pairs)
with their prompts' conditioning, noise levels and geometry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from trainer.families.base import Conditioning, ImageGeometry, ModelFamily

PROMPTS = ["a red circle", "a blue square"]


@dataclass
class Floor:
    device: torch.device
    family: ModelFamily
    denoiser: Any  # the family's denoiser module, with the LoRA attached by peft
    latents: torch.Tensor
    cond: Conditioning
    levels: torch.Tensor  # the family's noise levels (timesteps or sigmas), one per sample
    geometry: ImageGeometry


def load_floor(config: dict[str, Any], device: torch.device) -> Floor:
    """`config["model"]` loaded on `device` (bf16 weights on CUDA, fp32 elsewhere), with the batch at
    `config["resolution"]`; `config["gradient_checkpointing"]` turns it on."""
    from trainer.families.base import ImageGeometry
    from trainer.families.registry import load_family
    from trainer.lora import attach_lora

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    family = load_family(config["model"], device=device, weight_dtype=dtype)
    denoiser = family.denoiser
    attach_lora(denoiser, rank=4, alpha=4, dropout=0.0, targets=list(family.default_lora_targets))
    if config.get("gradient_checkpointing"):
        denoiser.enable_gradient_checkpointing()
    denoiser.train()
    side = config["resolution"] // family.vae_scale_factor
    channels = int(family.vae.config.latent_channels)
    latents = torch.randn(2 * len(PROMPTS), channels, side, side, device=device, dtype=dtype)
    cond = family.encode_prompts(PROMPTS).repeat_for_pairs().to(device, dtype)
    levels = family.draw_levels(len(PROMPTS), latents=latents).repeat(2)
    geometry = ImageGeometry.uncropped(len(PROMPTS), config["resolution"])
    return Floor(device, family, denoiser, latents, cond, levels, geometry)

"""The floor's model and batch, as bench/trainer_step.py and bench/floor_variants.py both time it: the
configured model's denoiser with a rank-4 LoRA, in training mode, and 2B random latents (B = 2 pairs)
with their prompts' conditioning, noise levels and geometry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from trainer.synthetic.demo_data import demo_pairs

if TYPE_CHECKING:
    from trainer.families.base import Conditioning, ImageGeometry, ModelFamily

# Two of the demo dataset's captions, which the timed jobs train on: a family that hands its transformer
# only the real text tokens (Z-Image, Qwen-Image) does the same text work in the floor as in a step.
PROMPTS = [pair.prompt for pair in demo_pairs(num_pairs=2, resolution=32, seed=0)]


@dataclass
class Floor:
    device: torch.device
    family: ModelFamily
    denoiser: Any  # the family's denoiser module, with the LoRA attached by peft
    latents: torch.Tensor
    cond: Conditioning
    levels: torch.Tensor  # the family's noise levels (timesteps or sigmas), one per sample
    geometry: ImageGeometry


def load_with_lora(model: str, device: torch.device) -> ModelFamily:
    """`model` loaded on `device` (bf16 weights on CUDA, fp32 elsewhere), its denoiser with the benches'
    LoRA: rank 4, the family's default targets, no dropout."""
    from trainer.families.registry import load_family
    from trainer.lora import attach_lora

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    family = load_family(model, device=device, weight_dtype=dtype)
    attach_lora(family.denoiser, rank=4, alpha=4, dropout=0.0, targets=list(family.default_lora_targets))
    return family


def load_floor(config: dict[str, Any], device: torch.device) -> Floor:
    """`config["model"]` loaded with LoRA (`load_with_lora`), with the batch at `config["resolution"]`;
    `config["gradient_checkpointing"]` turns it on."""
    from trainer.families.base import ImageGeometry
    from trainer.lora import frozen_dtype

    family = load_with_lora(config["model"], device)
    denoiser = family.denoiser
    dtype = frozen_dtype(denoiser)  # the base weights' dtype, which the inputs take
    if config.get("gradient_checkpointing"):
        denoiser.enable_gradient_checkpointing()
    denoiser.train()
    side = config["resolution"] // family.vae_scale_factor
    channels = family.latent_channels
    latents = torch.randn(2 * len(PROMPTS), channels, side, side, device=device, dtype=dtype)
    cond = family.encode_prompts(PROMPTS).repeat_for_pairs().to(device, dtype)
    levels = family.draw_levels(len(PROMPTS), latents=latents).repeat(2)
    geometry = ImageGeometry.uncropped(len(PROMPTS), config["resolution"])
    return Floor(device, family, denoiser, latents, cond, levels, geometry)

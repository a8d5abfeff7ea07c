"""One training objective evaluation: batch -> per-pair denoising errors -> the method's loss.

The batch is laid out [chosen_1..B; rejected_1..B]; both halves share timesteps, noise and conditioning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from trainer import losses
from trainer.encoding import encode_pixels, sample_latents
from trainer.models import Conditioning, DiffusionModel, encode_prompts, sdxl_time_ids
from trainer.spec import TrainSpec


@dataclass
class PairInputs:
    """Model inputs of B pairs: latents (2B, C, h, w), conditioning of B prompts, SDXL time ids (B, 6)."""

    latents: torch.Tensor
    conditioning: Conditioning
    time_ids: torch.Tensor | None


def prepare_inputs(model: DiffusionModel, batch: dict[str, Any], resolution: int) -> PairInputs:
    """Latents (fresh VAE sample, cached or not) and text conditioning for a collated batch."""
    if "latent_mean" in batch:
        mean, std = batch["latent_mean"], batch["latent_std"]
        conditioning = Conditioning(batch["prompt_embeds"], batch.get("pooled"))
    else:
        mean, std = encode_pixels(model.vae, batch["pixels"])
        conditioning = encode_prompts(model, batch["prompts"])
    latents = sample_latents(model.vae, mean, std)
    time_ids = None
    if model.family == "sdxl":
        time_ids = sdxl_time_ids(batch["original_sizes"], batch["crop_top_lefts"], resolution)
    return PairInputs(latents, conditioning, time_ids)


def denoising_errors(
    unet: UNet2DConditionModel,
    model: DiffusionModel,
    inputs: PairInputs,
    *,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
) -> torch.Tensor:
    """Per-sample mean squared error of the UNet's prediction, float32, shape (2B,).

    noise: (B, C, h, w) and timesteps: (B,) are shared by the chosen and rejected image of each pair.
    """
    dtype = next(p for p in unet.parameters() if not p.requires_grad).dtype
    noise2, t2 = noise.repeat(2, 1, 1, 1), timesteps.repeat(2)
    scheduler = model.noise_scheduler
    noisy = scheduler.add_noise(inputs.latents, noise2, t2)
    cond = inputs.conditioning.repeat_for_pairs().to(noisy.device, dtype)
    added = None
    if cond.pooled is not None and inputs.time_ids is not None:
        added = {"text_embeds": cond.pooled, "time_ids": inputs.time_ids.repeat(2, 1).to(noisy.device, dtype)}
    pred = unet(noisy.to(dtype), t2, cond.prompt_embeds, added_cond_kwargs=added).sample
    if model.prediction_type == "v_prediction":
        target = scheduler.get_velocity(inputs.latents, noise2, t2)
    else:
        target = noise2
    errors: torch.Tensor = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
    return errors


def training_loss(
    spec: TrainSpec, unet: UNet2DConditionModel, model: DiffusionModel, inputs: PairInputs
) -> tuple[torch.Tensor, dict[str, float]]:
    """Draw timesteps and noise, then the spec's loss and every logged term (as floats)."""
    num_pairs = inputs.latents.shape[0] // 2
    device = inputs.latents.device
    noise = torch.randn_like(inputs.latents[:num_pairs])
    timesteps = torch.randint(0, model.num_train_timesteps, (num_pairs,), device=device)
    errors = denoising_errors(unet, model, inputs, noise=noise, timesteps=timesteps)
    chosen, rejected = errors.chunk(2)
    result: losses.MapoResult | losses.DpoResult | losses.SftResult
    if spec.method == "mapo":
        result = losses.mapo_loss(
            chosen, rejected, beta=spec.beta, gamma=spec.gamma, num_train_timesteps=model.num_train_timesteps
        )
    elif spec.method == "dpo":
        ref_chosen, ref_rejected = _reference_errors(unet, model, inputs, noise, timesteps).chunk(2)
        result = losses.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=spec.beta_dpo)
    else:
        result = losses.sft_loss(chosen)
    metrics = {name: float(value.detach()) for name, value in result._asdict().items()}
    return result.loss, metrics


@torch.no_grad()
def _reference_errors(
    unet: UNet2DConditionModel,
    model: DiffusionModel,
    inputs: PairInputs,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
) -> torch.Tensor:
    """The frozen reference is the base model: the same UNet with its LoRA adapters switched off.

    Runs on the unwrapped module: no gradients flow, so a distributed wrapper has nothing to sync."""
    base: UNet2DConditionModel = getattr(unet, "module", unet)
    base.disable_adapters()
    try:
        return denoising_errors(base, model, inputs, noise=noise, timesteps=timesteps)
    finally:
        base.enable_adapters()

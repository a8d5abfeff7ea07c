"""The VAE of the pre-trained tiny models: a latent space fixed by construction, and the VAE taught it.

Learning an autoencoder from scratch took the tiny VAE minutes just to tell red from green, so the
latent of an image is defined instead: the area mean over each latent cell of R, G, B and chroma
(max - min of RGB), all in [-1, 1]. Colour is then in the latent from the first step, the edges of a
shape in how much of each cell it covers. The decoder learns to draw images from these latents and the
encoder to compute them, each as plain regression. The VAE keeps tiny.py's channels but normalises
groups of 4 channels, not single ones: a GroupNorm over one channel removes each image's mean of that
channel, i.e. its colour, right before the decoder's last layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import AutoencoderKL
from diffusers.optimization import get_scheduler

from trainer.synthetic.tiny import LATENT_LOGVAR
from trainer.synthetic.tiny_flux2 import set_bn_statistics

NORM_GROUPS = 2


def colour_capable_vae(vae: AutoencoderKL, *, seed: int) -> AutoencoderKL:
    """A fresh VAE of `vae`'s class and shape with NORM_GROUPS norm groups and a narrow posterior."""
    torch.manual_seed(seed)
    fresh: AutoencoderKL = type(vae).from_config({**vae.config, "norm_num_groups": NORM_GROUPS})
    _pin_posterior(fresh)
    return fresh


def target_latents(pixels: torch.Tensor, factor: int, channels: int = 4) -> torch.Tensor:
    """(N, 3, R, R) pixels in [-1, 1] -> (N, channels, R/f, R/f): f×f means of R, G, B and chroma, in
    [-1, 1], repeated to fill `channels` (a multiple of 4: SD3 and FLUX latents have 16)."""
    unit = (pixels + 1.0) / 2.0
    chroma = unit.amax(dim=1, keepdim=True) - unit.amin(dim=1, keepdim=True)
    features = torch.nn.functional.avg_pool2d(torch.cat([pixels, chroma * 2.0 - 1.0], dim=1), factor)
    return features.repeat(1, channels // 4, 1, 1)


def train_autoencoder(
    vae: AutoencoderKL,
    batches: Callable[[], torch.Tensor],
    *,
    steps: int,
    lr: float,
    on_step: Callable[[int, float], None],
) -> None:
    """Teach the decoder to draw from target latents and the encoder's mean to compute them."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    vae.requires_grad_(True)
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = get_scheduler(
        "cosine", optimizer, num_warmup_steps=min(20, steps // 10), num_training_steps=steps
    )
    for step in range(1, steps + 1):
        pixels = batches()
        target = target_latents(pixels, factor, vae.config.latent_channels)
        drawn = torch.nn.functional.mse_loss(vae.decode(target).sample, pixels)
        computed = torch.nn.functional.mse_loss(vae.encode(pixels).latent_dist.mean, target)
        loss = drawn + computed
        torch.autograd.backward(loss)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        on_step(step, float(loss.detach()))
    vae.requires_grad_(False)
    vae.eval()
    _pin_posterior(vae)


@torch.no_grad()
def calibrate_scaling(vae: AutoencoderKL, pixels: torch.Tensor) -> None:
    """Set the scaling factor that makes the latents of `pixels` unit-variance, as the schedule assumes
    (and, for a VAE with a shift factor, the shift that centres them). A VAE whose pipelines normalise
    with batch-norm statistics instead (FLUX.2's) gets those, per patchified channel."""
    latents = vae.encode(pixels).latent_dist.mean
    if isinstance(getattr(vae, "bn", None), torch.nn.BatchNorm2d):
        set_bn_statistics(vae, latents)
        return
    if vae.config.get("shift_factor") is not None:
        vae.register_to_config(shift_factor=float(latents.mean()))
        latents = latents - float(latents.mean())
    vae.register_to_config(scaling_factor=1.0 / float(latents.std()))


@torch.no_grad()
def reconstruction_error(vae: AutoencoderKL, pixels: torch.Tensor) -> float:
    """Mean squared error, in [-1, 1] pixel units, of decoding each image's latent mean."""
    decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample
    return float(torch.nn.functional.mse_loss(decoded, pixels))


@torch.no_grad()
def _pin_posterior(vae: AutoencoderKL) -> None:
    """Log-variance as narrow as tiny.py makes it, whatever the input: a latent sample is its mean."""
    channels = vae.config.latent_channels
    vae.quant_conv.weight[channels:] = 0.0
    vae.quant_conv.bias[channels:] = LATENT_LOGVAR

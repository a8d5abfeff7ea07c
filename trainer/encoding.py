"""Turning pixels into latents, and the optional cache of latents and text embeddings.

The cache stores each image's latent *distribution* (mean and std) rather than one sample, and draws a
fresh sample every step, so cached training sees the same latent noise as uncached training. With hflip,
both the image and its mirror are encoded; crops are center crops (spec forbids random_crop with cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from torch.utils.data import Dataset

from trainer.data import Augment, augmentation_rng, prepare_image
from trainer.dataset_format import PairRecord
from trainer.models import DiffusionModel, encode_prompts

ENCODE_BATCH = 8


@torch.no_grad()
def encode_pixels(vae: AutoencoderKL, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, R, R) pixels in [-1, 1] -> latent mean and std, each (N, C, R/f, R/f), float32."""
    dist = vae.encode(pixels.to(vae.device, torch.float32)).latent_dist
    return dist.mean, dist.std


def sample_latents(vae: AutoencoderKL, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """One draw from the latent distribution, scaled as the UNet was trained on."""
    sample = mean + std * torch.randn_like(mean)
    return sample * float(vae.config.scaling_factor)


@dataclass
class LatentCache:
    """Per pair i: mean/std of shape (F, 2, C, h, w) with F = 2 flips (or 1) and [chosen, rejected]."""

    means: list[torch.Tensor]
    stds: list[torch.Tensor]
    prompt_embeds: torch.Tensor  # (N, 77, D)
    pooled: torch.Tensor | None  # (N, P) for SDXL
    original_sizes: torch.Tensor  # (N, 2)
    crop_top_lefts: torch.Tensor  # (N, 2)


def build_cache(model: DiffusionModel, root: Path, pairs: list[PairRecord], augment: Augment) -> LatentCache:
    """Encode every pair (and its mirror when hflip) and every prompt once."""
    flips = (False, True) if augment.hflip else (False,)
    means: list[torch.Tensor] = []
    stds: list[torch.Tensor] = []
    sizes, crops = [], []
    for pair in pairs:
        images = [
            prepare_image(root / rel, resolution=augment.resolution, flip=flip, crop_fraction=(0.5, 0.5))
            for flip in flips
            for rel in (pair.chosen, pair.rejected)
        ]
        mean, std = encode_pixels(model.vae, torch.stack([im.pixels for im in images]))
        means.append(mean.cpu().reshape(len(flips), 2, *mean.shape[1:]))
        stds.append(std.cpu().reshape(len(flips), 2, *std.shape[1:]))
        sizes.append(images[0].original_size)
        crops.append(images[0].crop_top_left)
    embeds, pooled = _encode_all_prompts(model, [p.prompt for p in pairs])
    return LatentCache(means, stds, embeds, pooled, torch.tensor(sizes), torch.tensor(crops))


def _encode_all_prompts(
    model: DiffusionModel, prompts: list[str]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    parts = [
        encode_prompts(model, prompts[i : i + ENCODE_BATCH]) for i in range(0, len(prompts), ENCODE_BATCH)
    ]
    embeds = torch.cat([c.prompt_embeds.cpu() for c in parts])
    pooled = (
        None
        if parts[0].pooled is None
        else torch.cat([c.pooled.cpu() for c in parts if c.pooled is not None])
    )
    return embeds, pooled


class CachedPairDataset(Dataset[dict[str, Any]]):
    """Cached counterpart of `PairDataset`: latent mean/std and text embeddings instead of pixels."""

    def __init__(self, cache: LatentCache, *, hflip: bool, seed: int) -> None:
        self.cache, self.hflip, self.seed = cache, hflip, seed

    def __len__(self) -> int:
        return len(self.cache.means)

    def __getitem__(self, draw: int) -> dict[str, Any]:
        index = draw % len(self)
        flip = int(self.hflip and bool(torch.rand((), generator=augmentation_rng(self.seed, draw)) < 0.5))
        item: dict[str, Any] = {
            "latent_mean": self.cache.means[index][flip],
            "latent_std": self.cache.stds[index][flip],
            "prompt_embeds": self.cache.prompt_embeds[index],
            "original_size": self.cache.original_sizes[index],
            "crop_top_left": self.cache.crop_top_lefts[index],
            "index": index,
        }
        if self.cache.pooled is not None:
            item["pooled"] = self.cache.pooled[index]
        return item


def collate_cached(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch cached pairs into the [chosen; rejected] layout; conditioning stays per pair (B)."""
    mean = torch.stack([item["latent_mean"] for item in items])  # (B, 2, C, h, w)
    std = torch.stack([item["latent_std"] for item in items])
    batch: dict[str, Any] = {
        "latent_mean": torch.cat([mean[:, 0], mean[:, 1]]),
        "latent_std": torch.cat([std[:, 0], std[:, 1]]),
        "prompt_embeds": torch.stack([item["prompt_embeds"] for item in items]),
        "original_sizes": torch.stack([item["original_size"] for item in items]),
        "crop_top_lefts": torch.stack([item["crop_top_left"] for item in items]),
        "indices": torch.tensor([item["index"] for item in items]),
    }
    if "pooled" in items[0]:
        batch["pooled"] = torch.stack([item["pooled"] for item in items])
    return batch

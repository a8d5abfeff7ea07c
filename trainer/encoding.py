"""Turning pixels into latents, and the optional cache of latents and text embeddings.

The cache stores each image's latent *distribution* (mean and std) rather than one sample, and draws a
fresh sample every step, so cached training sees the same latent noise as uncached training. With hflip,
both the image and its mirror are encoded; crops are center crops (spec forbids random_crop with cache).
Images go through the VAE a bounded number of pixels per call (ENCODE_PIXELS), prompts through the text
encoders PROMPT_BATCH at a time. Preference masks are not encoded: each is area-averaged onto the latent
grid once (per flip) and kept beside the latents.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from trainer.batch import PairBatch
from trainer.data import Augment, PreparedImage, augmentation_rng, collate_masks, prepare_image, prepare_mask
from trainer.dataset_format import PairRecord
from trainer.families.base import Conditioning, ModelFamily
from trainer.masks import latent_grid_mask

# Pixels per VAE call while caching, by device type. Building the cache set a job's peak memory: 32
# images of 128 px a call raised the small SDXL job's peak RSS by 340 MB, its training steps by 210.
# On the CPU, 4 such images a call (a pair and its mirror) encoded 64 pairs fastest and with a quarter of
# that memory (docs/benchmarks.md, "Building the cache"); on CUDA a bigger call keeps the GPU busy, and
# two 1024 px images are about what the training step itself holds in activations.
ENCODE_PIXELS = {"cpu": 4 * 128 * 128, "cuda": 2 * 1024 * 1024}
PROMPT_BATCH = 8
CacheProgress = Callable[[int, int], None]  # pairs encoded, pairs in all


def images_per_call(device: torch.device, resolution: int) -> int:
    """How many `resolution`-px images one VAE call encodes on `device`: its pixel budget's worth, at
    least one. Devices without a budget of their own get the CPU's."""
    if resolution < 1:
        raise ValueError(f"resolution must be positive, not {resolution}")
    budget = ENCODE_PIXELS.get(device.type, ENCODE_PIXELS["cpu"])
    return max(1, budget // (resolution * resolution))


@torch.no_grad()
def encode_pixels(
    family: ModelFamily, pixels: torch.Tensor, *, per_call: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, R, R) pixels in [-1, 1] -> latent mean and std, each (N, C, R/f, R/f), float32; at most
    `per_call` images per VAE call (all N at once without it)."""
    chunks = torch.split(pixels, per_call) if per_call is not None else (pixels,)
    dists = [family.encode_pixels(chunk) for chunk in chunks]
    if len(dists) == 1:
        return dists[0]
    return torch.cat([mean for mean, _ in dists]), torch.cat([std for _, std in dists])


def sample_latents(family: ModelFamily, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """One draw from the latent distribution, shifted and scaled as the denoiser was trained on."""
    return family.to_latents(mean + std * standard_normal(mean))


def standard_normal(like: torch.Tensor) -> torch.Tensor:
    """Gaussian noise of `like`'s shape, dtype and device, drawn in row-major order whatever `like`'s
    memory layout. `randn_like` follows the layout: the VAE's channels-last output and the same values
    read back contiguous from a stored cache would draw each element different noise, and a resumed
    run would no longer repeat the uninterrupted one."""
    return torch.randn(like.shape, dtype=like.dtype, device=like.device)


@dataclass
class LatentCache:
    """Per pair i: mean/std of shape (F, 2, C, h, w) with F = 2 flips (or 1) and [chosen, rejected]."""

    means: list[torch.Tensor]
    stds: list[torch.Tensor]
    conditioning: Conditioning  # of the N prompts
    prompts: list[str]
    original_sizes: torch.Tensor  # (N, 2)
    crop_top_lefts: torch.Tensor  # (N, 2)
    # Per pair: its mask on the latent grid, (F, 1, h, w), or None for a pair without one.
    masks: list[torch.Tensor | None] | None = None


def build_cache(
    family: ModelFamily,
    root: Path,
    pairs: list[PairRecord],
    augment: Augment,
    *,
    on_progress: CacheProgress | None = None,
) -> LatentCache:
    """Encode every pair (and its mirror when hflip) and every prompt once: as many pairs at a time as
    fill one VAE call's pixel budget, a pair's images split over calls where they exceed it."""
    flips = (False, True) if augment.hflip else (False,)
    per_call = images_per_call(family.vae.device, augment.resolution)
    pairs_per_chunk = max(1, per_call // (2 * len(flips)))
    means: list[torch.Tensor] = []
    stds: list[torch.Tensor] = []
    sizes, crops = [], []
    masks: list[torch.Tensor | None] = []
    for start in range(0, len(pairs), pairs_per_chunk):
        chunk = pairs[start : start + pairs_per_chunk]
        images = [_pair_images(root, pair, augment, flips) for pair in chunk]
        pixels = torch.stack([im.pixels for row in images for im in row])
        mean, std = encode_pixels(family, pixels, per_call=per_call)
        per_pair = (len(chunk), len(flips), 2, *mean.shape[1:])
        # Row-major, as a stored cache reads back (cache_store.py): the VAE's output is channels-last, and
        # the denoiser's kernels round differently on the two layouts, so a resumed run would drift.
        means += list(mean.cpu().contiguous().reshape(per_pair).unbind(0))
        stds += list(std.cpu().contiguous().reshape(per_pair).unbind(0))
        sizes += [row[0].original_size for row in images]
        crops += [row[0].crop_top_left for row in images]
        grid = (mean.shape[-2], mean.shape[-1])
        masks += [
            _grid_mask(root, p, row[0], augment, flips, grid) for p, row in zip(chunk, images, strict=True)
        ]
        if on_progress is not None:
            on_progress(start + len(chunk), len(pairs))
    prompts = [p.prompt for p in pairs]
    return LatentCache(
        means,
        stds,
        encode_all_prompts(family, prompts),
        prompts,
        torch.tensor(sizes),
        torch.tensor(crops),
        masks,
    )


def _grid_mask(
    root: Path,
    pair: PairRecord,
    chosen: PreparedImage,
    augment: Augment,
    flips: tuple[bool, ...],
    grid: tuple[int, int],
) -> torch.Tensor | None:
    """The pair's mask for each flip, cropped as its images are and area-averaged onto the latent grid."""
    if pair.mask is None:
        return None
    pixels = [
        prepare_mask(
            root / pair.mask,
            image_size=chosen.original_size,
            resolution=augment.resolution,
            flip=flip,
            crop_fraction=(0.5, 0.5),
        )
        for flip in flips
    ]
    return latent_grid_mask(torch.stack(pixels), grid)


def _pair_images(
    root: Path, pair: PairRecord, augment: Augment, flips: tuple[bool, ...]
) -> list[PreparedImage]:
    """[chosen, rejected] for each flip, in that order."""
    return [
        prepare_image(root / rel, resolution=augment.resolution, flip=flip, crop_fraction=(0.5, 0.5))
        for flip in flips
        for rel in (pair.chosen, pair.rejected)
    ]


def encode_all_prompts(family: ModelFamily, prompts: list[str]) -> Conditioning:
    """The conditioning of every prompt, encoded PROMPT_BATCH at a time, on the CPU."""
    parts = [
        family.encode_prompts(prompts[i : i + PROMPT_BATCH]).to(torch.device("cpu"))
        for i in range(0, len(prompts), PROMPT_BATCH)
    ]
    return Conditioning.cat(parts)


class CachedPairDataset(Dataset[dict[str, Any]]):
    """Cached counterpart of `PairDataset`: latent mean/std and text conditioning instead of pixels."""

    def __init__(self, cache: LatentCache, *, hflip: bool, seed: int) -> None:
        self.cache, self.hflip, self.seed = cache, hflip, seed

    def __len__(self) -> int:
        return len(self.cache.means)

    def __getitem__(self, draw: int) -> dict[str, Any]:
        index = draw % len(self)
        flip = int(self.hflip and bool(torch.rand((), generator=augmentation_rng(self.seed, draw)) < 0.5))
        return {
            "latent_mean": self.cache.means[index][flip],
            "latent_std": self.cache.stds[index][flip],
            "conditioning": self.cache.conditioning.select(index),
            "prompt": self.cache.prompts[index],
            "original_size": self.cache.original_sizes[index],
            "crop_top_left": self.cache.crop_top_lefts[index],
            "index": index,
            "mask": self._mask(index, flip),
        }

    def _mask(self, index: int, flip: int) -> torch.Tensor | None:
        masks = self.cache.masks
        mask = None if masks is None else masks[index]
        return None if mask is None else mask[flip]


def collate_cached(items: list[dict[str, Any]]) -> PairBatch:
    """Batch cached pairs into the [chosen; rejected] layout; conditioning stays per pair (B)."""
    mean = torch.stack([item["latent_mean"] for item in items])  # (B, 2, C, h, w)
    std = torch.stack([item["latent_std"] for item in items])
    return PairBatch(
        indices=torch.tensor([item["index"] for item in items]),
        original_sizes=torch.stack([item["original_size"] for item in items]),
        crop_top_lefts=torch.stack([item["crop_top_left"] for item in items]),
        prompts=[item["prompt"] for item in items],
        latent_mean=torch.cat([mean[:, 0], mean[:, 1]]),
        latent_std=torch.cat([std[:, 0], std[:, 1]]),
        conditioning=Conditioning.cat([item["conditioning"] for item in items]),
        mask=collate_masks(items, mean.shape[-2:]),
    )

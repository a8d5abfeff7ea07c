"""Preference pairs from the canonical layout: transforms, batching, the train/eval split, latent cache.

A pair's two images get the SAME flip and the same relative crop, so they stay aligned; the crop offset of
the chosen image is recorded for SDXL's time ids. Pixels are normalised to [-1, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from trainer.batch import PairBatch
from trainer.dataset_format import DatasetFormatError, PairRecord, read_pairs
from trainer.errors import InvalidDatasetError


@dataclass(frozen=True)
class Augment:
    resolution: int
    random_crop: bool
    hflip: bool


@dataclass
class PreparedImage:
    pixels: torch.Tensor  # (3, R, R) in [-1, 1]
    original_size: tuple[int, int]  # (h, w) before resizing
    crop_top_left: tuple[int, int]  # (top, left) in the resized image


def load_pairs(dataset_dir: Path) -> list[PairRecord]:
    try:
        pairs = read_pairs(dataset_dir)
    except DatasetFormatError as exc:
        raise InvalidDatasetError(str(exc)) from exc
    if not pairs:
        raise InvalidDatasetError(f"dataset {dataset_dir} has no pairs")
    return pairs


def split_pairs(num_pairs: int, eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train, eval) index split; eval is empty when eval_fraction is 0."""
    num_eval = math.ceil(num_pairs * eval_fraction) if eval_fraction > 0 else 0
    if num_eval >= num_pairs:
        raise InvalidDatasetError(f"eval_fraction {eval_fraction} leaves no training pairs of {num_pairs}")
    order = torch.randperm(num_pairs, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[num_eval:]), sorted(order[:num_eval])


def prepare_image(
    path: Path, *, resolution: int, flip: bool, crop_fraction: tuple[float, float]
) -> PreparedImage:
    """Resize the shorter side to `resolution`, flip, then crop at `crop_fraction` of the slack."""
    with Image.open(path) as raw:
        image = raw.convert("RGB")
    original = (image.height, image.width)
    image, top_left = _resize_flip_crop(image, resolution=resolution, flip=flip, crop_fraction=crop_fraction)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return PreparedImage(torch.from_numpy(array).permute(2, 0, 1).contiguous(), original, top_left)


def prepare_mask(
    path: Path,
    *,
    image_size: tuple[int, int],
    resolution: int,
    flip: bool,
    crop_fraction: tuple[float, float],
) -> torch.Tensor:
    """A pair's mask as (1, R, R) weights in [0, 1] (white = 1), aligned with its images: stretched to the
    chosen image's (h, w) `image_size` first (a mask may have any size), then flipped and cropped as they
    are."""
    with Image.open(path) as raw:
        mask = raw.convert("L").resize((image_size[1], image_size[0]), Image.Resampling.BILINEAR)
    mask, _ = _resize_flip_crop(mask, resolution=resolution, flip=flip, crop_fraction=crop_fraction)
    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None].contiguous()


def _resize_flip_crop(
    image: Image.Image, *, resolution: int, flip: bool, crop_fraction: tuple[float, float]
) -> tuple[Image.Image, tuple[int, int]]:
    """The square crop of side `resolution` and its (top, left) in the resized image."""
    scale = resolution / min(image.height, image.width)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    if flip:
        image = ImageOps.mirror(image)
    top = round(crop_fraction[0] * (image.height - resolution))
    left = round(crop_fraction[1] * (image.width - resolution))
    return image.crop((left, top, left + resolution, top + resolution)), (top, left)


class PairDataset(Dataset[dict[str, Any]]):
    """Yields `{"pixels": (2, 3, R, R) [chosen, rejected], "prompt", "original_size", "crop_top_left",
    "mask"}`, the mask (1, R, R) or None for a pair without one.

    Indexed by draw (see `EpochSampler`); the flip and crop of a draw come from its own generator.
    """

    def __init__(self, root: Path, pairs: list[PairRecord], augment: Augment, *, seed: int) -> None:
        self.root, self.pairs, self.augment, self.seed = root, pairs, augment, seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, draw: int) -> dict[str, Any]:
        index = draw % len(self.pairs)
        pair = self.pairs[index]
        rng = augmentation_rng(self.seed, draw)
        flip = self.augment.hflip and bool(torch.rand((), generator=rng) < 0.5)
        crop = tuple(torch.rand(2, generator=rng).tolist()) if self.augment.random_crop else (0.5, 0.5)
        images = [
            prepare_image(self.root / rel, resolution=self.augment.resolution, flip=flip, crop_fraction=crop)
            for rel in (pair.chosen, pair.rejected)
        ]
        mask = None
        if pair.mask is not None:
            mask = prepare_mask(
                self.root / pair.mask,
                image_size=images[0].original_size,
                resolution=self.augment.resolution,
                flip=flip,
                crop_fraction=crop,
            )
        return {
            "pixels": torch.stack([images[0].pixels, images[1].pixels]),
            "prompt": pair.prompt,
            "original_size": torch.tensor(images[0].original_size),
            "crop_top_left": torch.tensor(images[0].crop_top_left),
            "index": index,
            "mask": mask,
        }


def collate_pairs(items: list[dict[str, Any]]) -> PairBatch:
    """Batch B pairs into the [chosen_1..B; rejected_1..B] layout the loss expects."""
    pixels = torch.stack([item["pixels"] for item in items])  # (B, 2, 3, R, R)
    return PairBatch(
        indices=torch.tensor([item["index"] for item in items]),
        original_sizes=torch.stack([item["original_size"] for item in items]),
        crop_top_lefts=torch.stack([item["crop_top_left"] for item in items]),
        prompts=[item["prompt"] for item in items],
        pixels=torch.cat([pixels[:, 0], pixels[:, 1]]),
        mask=collate_masks(items, pixels.shape[-2:]),
    )


def collate_masks(items: list[dict[str, Any]], size: tuple[int, ...]) -> torch.Tensor | None:
    """(B, 1, *size) masks of a batch, or None when no pair has one; a pair without a mask in a dataset
    that has some gets all ones (its whole image counts)."""
    masks: list[torch.Tensor | None] = [item.get("mask") for item in items]
    if all(mask is None for mask in masks):
        return None
    return torch.stack([torch.ones(1, *size) if mask is None else mask for mask in masks])


def augmentation_rng(seed: int, draw: int) -> torch.Generator:
    """A generator per draw, so a pair's augmentation never depends on what else consumed randomness
    before it (a loader that fetches ahead, a resume that skips batches)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + draw)


class EpochSampler(torch.utils.data.Sampler[int]):
    """Draw ids `epoch * length + pair index`, in a permutation per epoch derived from (seed, epoch)
    alone: a resumed run sees the same order, and datasets derive augmentations from the draw id."""

    def __init__(self, length: int, seed: int) -> None:
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Any:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        offset = self.epoch * self.length
        return iter(offset + i for i in torch.randperm(self.length, generator=generator).tolist())

"""The training batch: B preference pairs in the [chosen_1..B; rejected_1..B] layout (or the chosen
images alone, after `chosen_half`).

A batch holds either pixels and prompts (encoded each step) or, from the latent cache, each image's
latent distribution and the prompts' conditioning. The geometry (original size, crop) is the chosen
image's; both images of a pair get the same flip and crop.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from trainer.families.base import Conditioning


@dataclass
class PairBatch:
    indices: torch.Tensor  # (B,) pair indices into the training split
    original_sizes: torch.Tensor  # (B, 2)
    crop_top_lefts: torch.Tensor  # (B, 2)
    prompts: list[str]
    pixels: torch.Tensor | None = None  # (2B, 3, R, R) in [-1, 1]
    latent_mean: torch.Tensor | None = None  # (2B, C, h, w), unscaled VAE posterior
    latent_std: torch.Tensor | None = None
    conditioning: Conditioning | None = None  # of the B prompts
    # (B, 1, H, W) preference weights in [0, 1], one per pair, at any resolution (pixels, or the latent grid
    # from the cache); None when the dataset has no masks.
    mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def chosen_half(self) -> PairBatch:
        """The batch with its chosen images alone (the first half of pixels or latents), for a loss that
        never reads the rejected ones."""

        def first_half(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[: len(self)]

        return replace(
            self,
            pixels=first_half(self.pixels),
            latent_mean=first_half(self.latent_mean),
            latent_std=first_half(self.latent_std),
        )

    def to(self, device: torch.device, non_blocking: bool = False) -> PairBatch:
        """The batch on `device` (accelerate's loaders call this to place each batch)."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return replace(
            self,
            pixels=move(self.pixels),
            latent_mean=move(self.latent_mean),
            latent_std=move(self.latent_std),
            conditioning=None if self.conditioning is None else self.conditioning.to(device),
            mask=move(self.mask),
        )

"""Held-out preference accuracy: does the model denoise the chosen image better than the rejected one?

Every held-out pair is scored at the family's fixed noise levels (five timesteps, or five sigmas) with
fixed noise and the latent mean (no sampling), so two evaluations differ only because the model changed.
A masked pair is scored over its mask, as it is trained.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.cache_store import CacheStore
from trainer.data import Augment
from trainer.dataset_format import PairRecord
from trainer.encoding import build_cache
from trainer.families.base import ImageGeometry, ModelFamily
from trainer.lora import inference_mode
from trainer.objective import PairInputs, denoising_errors


class HeldOutEvaluator:
    """Scores held-out pairs; build once (it encodes the pairs, or reads them from `store`), call
    `evaluate` at any step."""

    def __init__(
        self,
        family: ModelFamily,
        root: Path,
        pairs: list[PairRecord],
        *,
        resolution: int,
        seed: int,
        store: CacheStore | None = None,
    ):
        self.family = family
        augment = Augment(resolution, random_crop=False, hflip=False)
        if store is None:
            cache = build_cache(family, root, pairs, augment)
        else:
            cache = store.load_or_build(family, root, pairs, augment)
        self.latents = family.to_latents(torch.stack([m[0] for m in cache.means]))  # (N, 2, C, h, w)
        self.conditioning = cache.conditioning
        self.geometry = ImageGeometry(cache.original_sizes, cache.crop_top_lefts, resolution)
        self.mask = _pair_masks(cache.masks, self.latents.shape[-2:])
        pairs_latents = torch.cat([self.latents[:, 0], self.latents[:, 1]])
        self.levels = family.evaluation_levels(latents=pairs_latents)
        generator = torch.Generator().manual_seed(seed)
        self.noise = torch.randn((len(self.levels), *self.latents[:, 0].shape), generator=generator)

    @torch.no_grad()
    def evaluate(self, denoiser: torch.nn.Module) -> dict[str, float]:
        """heldout_accuracy (share of (pair, level) with m_w < m_l), mean errors, their gap m_l - m_w."""
        device = next(denoiser.parameters()).device
        inputs = PairInputs(
            latents=torch.cat([self.latents[:, 0], self.latents[:, 1]]).to(device),
            conditioning=self.conditioning,
            geometry=self.geometry,
            mask=None if self.mask is None else self.mask.repeat(2, 1, 1, 1).to(device),
        )
        chosen, rejected = [], []
        with inference_mode(denoiser):
            for index, level in enumerate(self.levels):
                levels = level.expand(len(self.latents)).to(device)
                errors = denoising_errors(
                    denoiser, self.family, inputs, noise=self.noise[index].to(device), levels=levels
                )
                chosen.append(errors.chunk(2)[0].cpu())
                rejected.append(errors.chunk(2)[1].cpu())
        m_w, m_l = torch.cat(chosen), torch.cat(rejected)
        return {
            "heldout_accuracy": float((m_w < m_l).float().mean()),
            "heldout_chosen_loss": float(m_w.mean()),
            "heldout_rejected_loss": float(m_l.mean()),
            "heldout_error_gap": float((m_l - m_w).mean()),
        }


def _pair_masks(masks: list[torch.Tensor | None] | None, grid: tuple[int, ...]) -> torch.Tensor | None:
    """(N, 1, h, w) masks of the unflipped pairs, ones for a pair without one; None when none has one."""
    if masks is None or all(mask is None for mask in masks):
        return None
    return torch.stack([torch.ones(1, *grid) if mask is None else mask[0] for mask in masks])

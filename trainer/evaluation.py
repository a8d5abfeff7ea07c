"""Held-out preference accuracy: does the model denoise the chosen image better than the rejected one?

Every held-out pair is scored at a fixed set of timesteps with fixed noise and the latent mean (no
sampling), so two evaluations differ only because the model changed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from trainer.data import Augment
from trainer.dataset_format import PairRecord
from trainer.encoding import build_cache
from trainer.models import Conditioning, DiffusionModel, inference_mode, sdxl_time_ids
from trainer.objective import PairInputs, denoising_errors

EVAL_TIMESTEPS = (100, 300, 500, 700, 900)


class HeldOutEvaluator:
    """Scores held-out pairs; build once (it encodes the pairs), call `evaluate` at any step."""

    def __init__(
        self, model: DiffusionModel, root: Path, pairs: list[PairRecord], *, resolution: int, seed: int
    ):
        self.model, self.resolution = model, resolution
        cache = build_cache(model, root, pairs, Augment(resolution, random_crop=False, hflip=False))
        means = torch.stack([m[0] for m in cache.means])  # (N, 2, C, h, w)
        self.latents = means * float(model.vae.config.scaling_factor)
        self.conditioning = Conditioning(cache.prompt_embeds, cache.pooled)
        self.time_ids = sdxl_time_ids(cache.original_sizes, cache.crop_top_lefts, resolution)
        generator = torch.Generator().manual_seed(seed)
        self.noise = torch.randn((len(EVAL_TIMESTEPS), *self.latents[:, 0].shape), generator=generator)

    @torch.no_grad()
    def evaluate(self, unet: UNet2DConditionModel) -> dict[str, float]:
        """heldout_accuracy (fraction of (pair, t) with m_w < m_l), mean errors and their gap m_l - m_w."""
        device = next(unet.parameters()).device
        inputs = PairInputs(
            latents=torch.cat([self.latents[:, 0], self.latents[:, 1]]).to(device),
            conditioning=self.conditioning,
            time_ids=self.time_ids if self.model.family == "sdxl" else None,
        )
        chosen, rejected = [], []
        with inference_mode(unet):
            for t_index, t in enumerate(EVAL_TIMESTEPS):
                noise = self.noise[t_index].to(device)
                timesteps = torch.full((len(self.latents),), t, device=device, dtype=torch.long)
                errors = denoising_errors(unet, self.model, inputs, noise=noise, timesteps=timesteps)
                chosen.append(errors.chunk(2)[0].cpu())
                rejected.append(errors.chunk(2)[1].cpu())
        m_w, m_l = torch.cat(chosen), torch.cat(rejected)
        return {
            "heldout_accuracy": float((m_w < m_l).float().mean()),
            "heldout_chosen_loss": float(m_w.mean()),
            "heldout_rejected_loss": float(m_l.mean()),
            "heldout_error_gap": float((m_l - m_w).mean()),
        }

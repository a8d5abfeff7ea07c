"""SD 1.x/2.x: a UNet with epsilon or v-prediction (the scheduler's `prediction_type`), one CLIP text
encoder whose last hidden state conditions it."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from trainer.families import FamilyName
from trainer.families.base import Conditioning, ImageGeometry
from trainer.families.text import clip_ids
from trainer.families.unet import UNetFamily


class SDFamily(UNetFamily):
    """SD 1.x/2.x: one CLIP text encoder, its last hidden state."""

    name: ClassVar[FamilyName] = "sd"

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        encoder = self.text_encoders[0]
        ids = clip_ids(self.tokenizers[0], prompts).to(encoder.device)
        return Conditioning({"prompt_embeds": encoder(ids)[0]})

    def predict(
        self,
        denoiser: torch.nn.Module,
        noisy: torch.Tensor,
        levels: torch.Tensor,
        conditioning: Conditioning,
        geometry: ImageGeometry,
    ) -> torch.Tensor:
        prediction: torch.Tensor = denoiser(noisy, levels, conditioning["prompt_embeds"]).sample
        return prediction

    def pipeline_components(self, denoiser: torch.nn.Module) -> dict[str, Any]:
        no_checker = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
        return super().pipeline_components(denoiser) | no_checker

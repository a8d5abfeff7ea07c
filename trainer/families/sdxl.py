"""SDXL: a UNet with epsilon prediction, two CLIP text encoders, the second one's pooled embedding and six
time ids per image (original size, crop, target size)."""

from __future__ import annotations

from typing import ClassVar

import torch

from trainer.families import FamilyName
from trainer.families.base import Conditioning, ImageGeometry
from trainer.families.text import clip_ids
from trainer.families.unet import UNetFamily


class SDXLFamily(UNetFamily):
    """SDXL: penultimate hidden states of both CLIP encoders side by side, the second one's pooled
    (projected) embedding, and time ids (original h, w, crop top, left, target h, w) per image."""

    name: ClassVar[FamilyName] = "sdxl"
    second_encoder: ClassVar[bool] = True

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        hidden: list[torch.Tensor] = []
        pooled = torch.empty(0)
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders, strict=True):
            out = encoder(clip_ids(tokenizer, prompts).to(encoder.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]
        return Conditioning({"prompt_embeds": torch.cat(hidden, dim=-1), "pooled": pooled})

    def unconditional(self, num: int) -> Conditioning:
        # SDXL pipelines (force_zeros_for_empty_prompt) guide against zeros, not against the encoded "".
        empty = self.encode_prompts([""])
        return Conditioning(
            {k: torch.zeros_like(v).repeat(num, *([1] * (v.ndim - 1))) for k, v in empty.tensors.items()}
        )

    def predict(
        self,
        denoiser: torch.nn.Module,
        noisy: torch.Tensor,
        levels: torch.Tensor,
        conditioning: Conditioning,
        geometry: ImageGeometry,
    ) -> torch.Tensor:
        images_per_pair = len(noisy) // len(geometry.original_sizes)
        time_ids = sdxl_time_ids(geometry).repeat(images_per_pair, 1).to(noisy.device, noisy.dtype)
        added = {"text_embeds": conditioning["pooled"], "time_ids": time_ids}
        prediction: torch.Tensor = denoiser(
            noisy, levels, conditioning["prompt_embeds"], added_cond_kwargs=added
        ).sample
        return prediction


def sdxl_time_ids(geometry: ImageGeometry) -> torch.Tensor:
    """(B, 6) time ids: original (h, w), crop (top, left), target (h, w), as SDXL was trained with."""
    sizes = geometry.original_sizes
    target = torch.tensor([geometry.resolution] * 2, dtype=sizes.dtype, device=sizes.device)
    crops = geometry.crop_top_lefts.to(sizes.device, sizes.dtype)
    return torch.cat([sizes, crops, target.expand(len(sizes), 2)], dim=1)

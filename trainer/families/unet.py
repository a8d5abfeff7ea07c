"""The UNet families with noise prediction: SD 1.x/2.x (`sd`, epsilon or v-prediction) and SDXL.

The noise schedule is the base model's DDPM schedule: t ~ uniform{0..T-1} per pair, `add_noise`, target
epsilon (or v). SDXL adds the second encoder's pooled embedding and six time ids per image.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from trainer.export import to_kohya
from trainer.families import FamilyName
from trainer.families.base import Conditioning, ImageGeometry, ModelFamily, Noised
from trainer.families.text import clip_ids

EVALUATION_TIMESTEPS = (100, 300, 500, 700, 900)


class UNetFamily(ModelFamily):
    """What SD and SDXL share: the UNet, the DDPM schedule, one or two CLIP encoders."""

    denoiser_class: ClassVar[Any] = UNet2DConditionModel
    scheduler_class: ClassVar[Any] = DDPMScheduler
    lora_layers_argument: ClassVar[str] = "unet_lora_layers"
    second_encoder: ClassVar[bool] = False

    @classmethod
    def load_text_stack(
        cls, source: str, *, weight_dtype: torch.dtype, options: dict[str, Any]
    ) -> tuple[list[Any], list[Any]]:
        encoders: list[Any] = [
            CLIPTextModel.from_pretrained(source, subfolder="text_encoder", torch_dtype=weight_dtype)
        ]
        tokenizers: list[Any] = [CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")]
        if cls.second_encoder:
            second = CLIPTextModelWithProjection.from_pretrained(
                source, subfolder="text_encoder_2", torch_dtype=weight_dtype
            )
            encoders.append(second)
            tokenizers.append(CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2"))
        return encoders, tokenizers

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler.config.prediction_type)

    @property
    def margin_scale(self) -> float:
        return float(self.num_train_timesteps)

    @property
    def dpo_beta(self) -> float:
        return 5000.0

    def draw_levels(self, num: int, *, latents: torch.Tensor) -> torch.Tensor:
        return torch.randint(0, self.num_train_timesteps, (num,), device=latents.device)

    def evaluation_levels(self, *, latents: torch.Tensor) -> list[torch.Tensor]:
        return [torch.tensor(t, dtype=torch.long) for t in EVALUATION_TIMESTEPS]

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, levels: torch.Tensor) -> Noised:
        noisy = self.scheduler.add_noise(latents, noise, levels)
        if self.prediction_type == "v_prediction":
            return Noised(noisy, self.scheduler.get_velocity(latents, noise, levels))
        return Noised(noisy, noise)

    def lora_state(self, denoiser: torch.nn.Module) -> dict[str, torch.Tensor]:
        """`<module>.lora.down.weight` / `.lora.up.weight`, the UNet LoRA naming diffusers writes."""
        converted: dict[str, torch.Tensor] = convert_state_dict_to_diffusers(super().lora_state(denoiser))
        return converted

    def kohya_state(self, state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
        return to_kohya(state, alpha)

    def pipeline_components(self, denoiser: torch.nn.Module) -> dict[str, Any]:
        return {
            "unet": denoiser,
            "vae": self.vae,
            "text_encoder": self.text_encoders[0],
            "tokenizer": self.tokenizers[0],
        }


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

    def pipeline_components(self, denoiser: torch.nn.Module) -> dict[str, Any]:
        second = {"text_encoder_2": self.text_encoders[1], "tokenizer_2": self.tokenizers[1]}
        return super().pipeline_components(denoiser) | second


def sdxl_time_ids(geometry: ImageGeometry) -> torch.Tensor:
    """(B, 6) time ids: original (h, w), crop (top, left), target (h, w), as SDXL was trained with."""
    sizes = geometry.original_sizes
    target = torch.tensor([geometry.resolution] * 2, dtype=sizes.dtype, device=sizes.device)
    crops = geometry.crop_top_lefts.to(sizes.device, sizes.dtype)
    return torch.cat([sizes, crops, target.expand(len(sizes), 2)], dim=1)

"""What the UNet families with noise prediction share (SD 1.x/2.x in sd.py, SDXL in sdxl.py).

The noise schedule is the base model's DDPM schedule: t ~ uniform{0..T-1} per pair, `add_noise`, target
epsilon (or v).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from trainer.export import to_kohya
from trainer.families.base import ModelFamily, Noised
from trainer.families.loading import Loading

EVALUATION_TIMESTEPS = (100, 300, 500, 700, 900)


class UNetFamily(ModelFamily):
    """What SD and SDXL share: the UNet, the DDPM schedule, one or two CLIP encoders."""

    denoiser_class: ClassVar[Any] = UNet2DConditionModel
    scheduler_class: ClassVar[Any] = DDPMScheduler
    lora_layers_argument: ClassVar[str] = "unet_lora_layers"
    second_encoder: ClassVar[bool] = False

    @classmethod
    def load_text_stack(cls, loading: Loading, *, options: dict[str, Any]) -> tuple[list[Any], list[Any]]:
        source = loading.source
        encoders: list[Any] = [loading.text_encoder(CLIPTextModel, "text_encoder")]
        tokenizers: list[Any] = [CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")]
        if cls.second_encoder:
            encoders.append(loading.text_encoder(CLIPTextModelWithProjection, "text_encoder_2"))
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

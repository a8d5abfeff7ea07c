"""Load SD 1.x/2.x and SDXL components, encode prompts, and attach LoRA to the UNet.

The family is detected from the UNet config: SDXL's UNet takes "text_time" added conditioning (pooled
text embeddings and six time ids). The VAE always stays in float32 (SDXL's VAE overflows in fp16).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from peft import LoraConfig
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from trainer.errors import ModelLoadError

Family = Literal["sd", "sdxl"]


@dataclass
class Conditioning:
    """Text conditioning for a batch of B prompts.

    prompt_embeds: (B, 77, D) hidden states the UNet cross-attends to.
    pooled: (B, P) pooled embedding of the second encoder (SDXL only, else None).
    """

    prompt_embeds: torch.Tensor
    pooled: torch.Tensor | None = None

    def repeat_for_pairs(self) -> Conditioning:
        """Duplicate along the batch for the [chosen; rejected] layout: both images share a prompt."""
        pooled = None if self.pooled is None else self.pooled.repeat(2, 1)
        return Conditioning(self.prompt_embeds.repeat(2, 1, 1), pooled)

    def to(self, device: torch.device, dtype: torch.dtype) -> Conditioning:
        pooled = None if self.pooled is None else self.pooled.to(device, dtype)
        return Conditioning(self.prompt_embeds.to(device, dtype), pooled)


@dataclass
class DiffusionModel:
    """The trainable pieces of a pipeline plus what is needed to condition it."""

    family: Family
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: list[CLIPTextModel]
    tokenizers: list[CLIPTokenizer]
    noise_scheduler: DDPMScheduler
    source: str

    @property
    def native_resolution(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def vae_scale_factor(self) -> int:
        return int(2 ** (len(self.vae.config.block_out_channels) - 1))

    @property
    def prediction_type(self) -> str:
        return str(self.noise_scheduler.config.prediction_type)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.noise_scheduler.config.num_train_timesteps)


def detect_family(unet_config: dict[str, Any]) -> Family:
    """SDXL's UNet has "text_time" added conditioning; SD 1.x/2.x has none."""
    return "sdxl" if unet_config.get("addition_embed_type") == "text_time" else "sd"


def load_model(source: str, *, device: torch.device, weight_dtype: torch.dtype) -> DiffusionModel:
    """Load a diffusers folder or hub id; frozen, on `device`, UNet and text encoders in `weight_dtype`."""
    try:
        unet_config = UNet2DConditionModel.load_config(source, subfolder="unet")
        family = detect_family(dict(unet_config))
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=weight_dtype)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=torch.float32)
        scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler")
        encoders, tokenizers = _load_text_stack(source, family, weight_dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load base model {source!r}: {exc}") from exc
    for module in (unet, vae, *encoders):
        module.requires_grad_(False)
        module.eval()
    for module in (unet, vae, *encoders):
        module.to(device)
    return DiffusionModel(family, unet, vae, encoders, tokenizers, scheduler, source)


def _load_text_stack(
    source: str, family: Family, dtype: torch.dtype
) -> tuple[list[Any], list[CLIPTokenizer]]:
    encoders: list[Any] = [CLIPTextModel.from_pretrained(source, subfolder="text_encoder", torch_dtype=dtype)]
    tokenizers = [CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")]
    if family == "sdxl":
        second = CLIPTextModelWithProjection.from_pretrained(
            source, subfolder="text_encoder_2", torch_dtype=dtype
        )
        encoders.append(second)
        tokenizers.append(CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2"))
    return encoders, tokenizers


@torch.no_grad()
def encode_prompts(model: DiffusionModel, prompts: list[str]) -> Conditioning:
    """SD: last hidden state of the one encoder. SDXL: penultimate hidden states of both encoders
    concatenated on the feature axis, and the second encoder's pooled (projected) embedding."""
    device = model.unet.device
    if model.family == "sd":
        ids = _tokenize(model.tokenizers[0], prompts).to(device)
        return Conditioning(model.text_encoders[0](ids)[0])
    hidden: list[torch.Tensor] = []
    pooled: torch.Tensor | None = None
    for tokenizer, encoder in zip(model.tokenizers, model.text_encoders, strict=True):
        out = encoder(_tokenize(tokenizer, prompts).to(device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = out[0]
    return Conditioning(torch.cat(hidden, dim=-1), pooled)


def _tokenize(tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    ids: torch.Tensor = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return ids


def sdxl_time_ids(
    original_sizes: torch.Tensor, crop_top_lefts: torch.Tensor, resolution: int
) -> torch.Tensor:
    """(B, 6) time ids: original (h, w), crop (top, left), target (h, w), as SDXL was trained with."""
    target = torch.tensor([resolution, resolution], dtype=original_sizes.dtype, device=original_sizes.device)
    return torch.cat([original_sizes, crop_top_lefts, target.expand(len(original_sizes), 2)], dim=1)


def attach_lora(
    unet: UNet2DConditionModel, *, rank: int, alpha: float, dropout: float, targets: list[str]
) -> LoraConfig:
    """Add a trainable LoRA adapter (gaussian init, so B = 0 and the model is unchanged at step 0) and
    keep its weights in float32 whatever the base dtype, as mixed-precision training needs."""
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian", target_modules=targets
    )
    try:
        unet.add_adapter(config)
    except ValueError as exc:
        raise ModelLoadError(f"lora_target_modules {targets} match no UNet module: {exc}") from exc
    for param in unet.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    return config


@contextmanager
def inference_mode(module: torch.nn.Module) -> Iterator[None]:
    """Every submodule in eval mode for the block, then each back in the mode it had.

    The base UNet is loaded in eval mode, but the LoRA layers peft adds afterwards start in train mode, so
    their dropout would otherwise also act on held-out scoring and validation images."""
    modes = [(sub, sub.training) for sub in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for sub, training in modes:
            sub.train(training)


def trainable_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]

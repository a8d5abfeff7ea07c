"""A real-size SDXL pipeline with random weights, for timing on a GPU (no hub access is needed).

The UNet has SDXL 1.0's exact configuration (2.57B parameters: channels 320/640/1280, transformer depths
1/2/10, cross-attention 2048, text-time conditioning of 2816), the text encoders have CLIP ViT-L's and
OpenCLIP bigG's shapes, the VAE has SDXL's. Only the tokenizer is the project's small offline one, which
changes nothing the step time depends on (prompts are padded to 77 tokens either way). Weights are saved
in bfloat16 (the VAE in float32, as the trainer runs it), so the folder is ~7 GB instead of ~14.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from bench.full_size import count_parameters, kl_vae_config
from trainer.synthetic.tiny import MAX_LENGTH, build_tokenizer, sd_scheduler

SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
}
SDXL_VAE = kl_vae_config(latent_channels=4, scaling_factor=0.13025)
# (hidden, intermediate, layers, heads, activation) of CLIP ViT-L/14 and OpenCLIP ViT-bigG/14.
TEXT_ENCODERS = ((768, 3072, 12, 12, "quick_gelu"), (1280, 5120, 32, 20, "gelu"))


def build_full_sdxl(out_dir: Path, *, device: str = "cpu", seed: int = 0) -> Path:
    """Build the pipeline on `device` (a GPU builds it in seconds) and save it as a diffusers folder."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = build_tokenizer(Path(scratch))
    with torch.device(device):
        unet = UNet2DConditionModel(**SDXL_UNET).to(torch.bfloat16)
        first = CLIPTextModel(_text_config(TEXT_ENCODERS[0], tokenizer)).to(torch.bfloat16)
        second = CLIPTextModelWithProjection(_text_config(TEXT_ENCODERS[1], tokenizer)).to(torch.bfloat16)
        vae = AutoencoderKL(**SDXL_VAE)
    pipeline = StableDiffusionXLPipeline(
        unet=unet,
        vae=vae,
        text_encoder=first,
        text_encoder_2=second,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        scheduler=sd_scheduler(),
    )
    pipeline.save_pretrained(out_dir)
    return out_dir


def _text_config(
    shape: tuple[int, int, int, int, str], tokenizer: CLIPTokenizer | None = None
) -> CLIPTextConfig:
    """A text encoder of `shape` (see TEXT_ENCODERS) for `tokenizer`; without one, for parameter counting
    (any vocabulary will do: the embedding is a rounding error next to the rest)."""
    hidden, intermediate, layers, heads, activation = shape
    special: dict[str, Any] = {}
    if tokenizer is not None:
        special = {key: getattr(tokenizer, key) for key in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return CLIPTextConfig(
        vocab_size=len(tokenizer) if tokenizer is not None else 512,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=hidden,
        hidden_act=activation,
        **special,
    )


def parameter_counts() -> dict[str, int]:
    """Parameters per component, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        counts = {
            "unet": count_parameters(UNet2DConditionModel(**SDXL_UNET)),
            "vae": count_parameters(AutoencoderKL(**SDXL_VAE)),
        }
        for name, shape in zip(("text_encoder", "text_encoder_2"), TEXT_ENCODERS, strict=True):
            counts[name] = count_parameters(CLIPTextModelWithProjection(_text_config(shape)))
    return counts


if __name__ == "__main__":
    # `python -m bench.full_sdxl` prints the parameter counts; `... OUT_DIR` builds the pipeline there.
    if len(sys.argv) > 1:
        build_full_sdxl(Path(sys.argv[1]), device="cuda" if torch.cuda.is_available() else "cpu")
    for component, count in parameter_counts().items():
        print(f"{component:16} {count / 1e6:9.1f} M")

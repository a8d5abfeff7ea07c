"""A real-size FLUX.1-dev pipeline with random weights, for timing on a GPU (no hub access is needed).

The transformer has FLUX.1-dev's exact configuration (11.9B parameters: 19 double-stream and 38
single-stream blocks of 24 heads x 128, joint attention over T5's 4096-wide tokens, pooled CLIP 768,
guidance embedding), the text encoders have CLIP ViT-L's and T5 v1.1 XXL's shapes, the VAE has FLUX's
(16 latent channels, with its shift and scaling factors). The tokenizers are the project's small offline
ones: prompts are padded to 77 and 512 tokens either way, which is what the step time depends on. Weights
are saved in bfloat16 (the VAE in float32, as the trainer runs it): ~33 GB.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextModel, T5Config, T5EncoderModel

from bench.full_sdxl import TEXT_ENCODERS, _text_config
from bench.full_size import count_parameters, kl_vae_config
from trainer.synthetic.tiny import build_tokenizer
from trainer.synthetic.tiny_flow import build_t5_tokenizer, flux_scheduler

FLUX_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
FLUX_VAE = kl_vae_config(
    latent_channels=16,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
T5_XXL: dict[str, Any] = {"d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_layers": 24, "num_heads": 64}


def build_full_flux(out_dir: Path, *, device: str = "cpu", seed: int = 0) -> Path:
    """Build the pipeline on `device` (a GPU builds it in seconds) and save it as a diffusers folder."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        clip_tokenizer = build_tokenizer(Path(scratch) / "clip")
        t5_tokenizer = build_t5_tokenizer(Path(scratch) / "t5")
    t5_tokenizer.model_max_length = 512
    with torch.device(device):
        transformer = FluxTransformer2DModel(**FLUX_TRANSFORMER).to(torch.bfloat16)
        clip = CLIPTextModel(_text_config(TEXT_ENCODERS[0], clip_tokenizer)).to(torch.bfloat16)
        t5 = T5EncoderModel(_t5_config(len(t5_tokenizer))).to(torch.bfloat16)
        vae = AutoencoderKL(**FLUX_VAE)
    pipeline = FluxPipeline(
        transformer=transformer,
        scheduler=flux_scheduler(),
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
    )
    pipeline.save_pretrained(out_dir)
    return out_dir


def _t5_config(vocab_size: int) -> T5Config:
    return T5Config(vocab_size=vocab_size, feed_forward_proj="gated-gelu", is_encoder_decoder=False, **T5_XXL)


def parameter_counts() -> dict[str, int]:
    """Parameters per component, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        return {
            "transformer": count_parameters(FluxTransformer2DModel(**FLUX_TRANSFORMER)),
            "vae": count_parameters(AutoencoderKL(**FLUX_VAE)),
            "text_encoder": count_parameters(CLIPTextModel(_text_config(TEXT_ENCODERS[0]))),
            "text_encoder_2": count_parameters(T5EncoderModel(_t5_config(32128))),
        }


if __name__ == "__main__":
    # `python -m bench.full_flux` prints the parameter counts; `... OUT_DIR` builds the pipeline there.
    if len(sys.argv) > 1:
        build_full_flux(Path(sys.argv[1]), device="cuda" if torch.cuda.is_available() else "cpu")
    for component, count in parameter_counts().items():
        print(f"{component:16} {count / 1e6:9.1f} M")

"""A real-size FLUX.2 [klein] 4B pipeline with random weights, for timing on a GPU (no hub access needed).

The transformer has klein-4B's configuration (diffusers' scripts/convert_flux2_to_diffusers.py: 5 double-
and 20 single-stream blocks of 24 heads x 128, joint attention over 3 x 2560-wide Qwen3 states, 128 input
channels, no guidance embedding; 3.9B parameters), the text encoder Qwen3-4B's shapes (36 layers, 2560
wide, 32 query and 8 key/value heads of 128, vocabulary 151936), the VAE AutoencoderKLFlux2's defaults
(128-256-512-512, 32 latent channels). The tokenizer is the project's small offline Qwen one: prompts are
padded to 512 tokens either way, which is what the step time depends on. The pipeline is the base klein
(is_distilled=False, CFG at 4.0), as tiny_flux2's. Weights are saved in bfloat16 (the VAE in float32, as
the trainer runs it): ~16 GB.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Transformer2DModel
from transformers import Qwen3Config, Qwen3ForCausalLM

from bench.full_size import QWEN3_4B, count_parameters
from trainer.synthetic.tiny_flow import flux_scheduler
from trainer.synthetic.tiny_flux2 import TEMPLATE
from trainer.synthetic.tiny_qwen import IM_END, build_qwen_tokenizer

KLEIN_4B_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 128,
    "num_layers": 5,
    "num_single_layers": 20,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 7680,
    "timestep_guidance_channels": 256,
    "mlp_ratio": 3.0,
    "axes_dims_rope": (32, 32, 32, 32),
    "rope_theta": 2000,
    "eps": 1e-6,
    "guidance_embeds": False,
}
FLUX2_VAE: dict[str, Any] = {
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 32,
    "norm_num_groups": 32,
}


def build_full_flux2(out_dir: Path, *, device: str = "cpu", seed: int = 0) -> Path:
    """Build the pipeline on `device` (a GPU builds it in seconds) and save it as a diffusers folder."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = build_qwen_tokenizer(Path(scratch), template_text=[TEMPLATE.format("")])
    config = Qwen3Config(
        **QWEN3_4B,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.device(device):
        transformer = Flux2Transformer2DModel(**KLEIN_4B_TRANSFORMER).to(torch.bfloat16)
        text_encoder = Qwen3ForCausalLM(config).to(torch.bfloat16)
        vae = AutoencoderKLFlux2(**FLUX2_VAE)
    Flux2KleinPipeline(
        scheduler=flux_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=False,
    ).save_pretrained(out_dir)
    return out_dir


def parameter_counts() -> dict[str, int]:
    """Parameters per component, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        return {
            "transformer": count_parameters(Flux2Transformer2DModel(**KLEIN_4B_TRANSFORMER)),
            "vae": count_parameters(AutoencoderKLFlux2(**FLUX2_VAE)),
            "text_encoder": count_parameters(Qwen3ForCausalLM(Qwen3Config(**QWEN3_4B))),
        }


if __name__ == "__main__":
    # `python -m bench.full_flux2` prints the parameter counts; `... OUT_DIR` builds the pipeline there.
    if len(sys.argv) > 1:
        build_full_flux2(Path(sys.argv[1]), device="cuda" if torch.cuda.is_available() else "cpu")
    for component, count in parameter_counts().items():
        print(f"{component:16} {count / 1e6:9.1f} M")

"""A real-size Z-Image-Turbo pipeline with random weights, for timing on a GPU (no hub access is needed).

The transformer has Tongyi-MAI/Z-Image-Turbo's configuration (transformer/config.json: 30 main blocks plus
2 noise- and 2 context-refiner blocks, 3840 wide, 30 heads of 128, RoPE axes 32/48/48 over 1536/512/512
positions, captions 2560 wide; 6.2B parameters), the text encoder Qwen3-4B's shapes as the `Qwen3Model`
the pipeline loads (36 layers, 2560 wide, 32 query and 8 key/value heads of 128, vocabulary 151936), the
VAE FLUX.1's (16 latent channels, shift 0.1159, scale 0.3611, no quant convs), the scheduler Turbo's
(static shift 3). The tokenizer is the project's small offline Qwen one: prompts are padded to the
pipeline's 512 tokens either way, which is what the text encoder's time depends on (the transformer's
depends on each prompt's real length). Weights are saved in bfloat16 (the VAE in float32, as the trainer
runs it): ~20 GB.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
from transformers import Qwen3Config, Qwen3Model

from bench.full_flux import FLUX_VAE
from bench.full_size import QWEN3_4B, count_parameters
from trainer.synthetic.tiny_qwen import IM_END, build_qwen_tokenizer
from trainer.synthetic.tiny_z_image import TURBO_SCHEDULER

Z_IMAGE_TURBO_TRANSFORMER: dict[str, Any] = {
    "all_patch_size": (2,),
    "all_f_patch_size": (1,),
    "in_channels": 16,
    "dim": 3840,
    "n_layers": 30,
    "n_refiner_layers": 2,
    "n_heads": 30,
    "n_kv_heads": 30,
    "norm_eps": 1e-5,
    "qk_norm": True,
    "cap_feat_dim": 2560,
    "rope_theta": 256.0,
    "t_scale": 1000.0,
    "axes_dims": [32, 48, 48],
    "axes_lens": [1536, 512, 512],
}


def build_full_z_image(out_dir: Path, *, device: str = "cpu", seed: int = 0) -> Path:
    """Build the pipeline on `device` (a GPU builds it in seconds) and save it as a diffusers folder."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = build_qwen_tokenizer(Path(scratch))
    config = Qwen3Config(
        **QWEN3_4B,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.device(device):
        transformer = ZImageTransformer2DModel(**Z_IMAGE_TURBO_TRANSFORMER).to(torch.bfloat16)
        text_encoder = Qwen3Model(config).to(torch.bfloat16)
        vae = AutoencoderKL(**FLUX_VAE)
    ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**TURBO_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    ).save_pretrained(out_dir)
    return out_dir


def parameter_counts() -> dict[str, int]:
    """Parameters per component, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        return {
            "transformer": count_parameters(ZImageTransformer2DModel(**Z_IMAGE_TURBO_TRANSFORMER)),
            "vae": count_parameters(AutoencoderKL(**FLUX_VAE)),
            "text_encoder": count_parameters(Qwen3Model(Qwen3Config(**QWEN3_4B))),
        }


if __name__ == "__main__":
    # `python -m bench.full_z_image` prints the parameter counts; `... OUT_DIR` builds the pipeline there.
    if len(sys.argv) > 1:
        build_full_z_image(Path(sys.argv[1]), device="cuda" if torch.cuda.is_available() else "cpu")
    for component, count in parameter_counts().items():
        print(f"{component:16} {count / 1e6:9.1f} M")

"""A real-size Chroma1-HD pipeline with random weights, for timing on a GPU (no hub access is needed).

The transformer has Chroma1-HD's exact configuration, which is ChromaTransformer2DModel's defaults (8.9B
parameters: 19 double-stream and 38 single-stream blocks of 24 heads x 128, joint attention over T5's
4096-wide tokens, and the 64-channel, 5120-wide, 5-layer modulation approximator in place of FLUX.1's
per-block modulations, pooled CLIP projection and guidance embedding). The text encoder has T5 v1.1 XXL's
shape, the VAE is FLUX.1's (16 latent channels, with its shift and scaling factors). The tokenizer is the
project's small offline T5 one: prompts are padded to the pipeline's 512 tokens either way, which is what
the step time depends on. Weights are saved in bfloat16 (the VAE in float32, as the trainer runs it):
~28 GB.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, ChromaPipeline, ChromaTransformer2DModel
from transformers import T5EncoderModel

from bench.full_flux import FLUX_VAE, _t5_config
from bench.full_size import count_parameters
from trainer.synthetic.tiny_flow import build_t5_tokenizer, flux_scheduler

CHROMA_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "axes_dims_rope": (16, 56, 56),
    "approximator_num_channels": 64,
    "approximator_hidden_dim": 5120,
    "approximator_layers": 5,
}


def build_full_chroma(out_dir: Path, *, device: str = "cpu", seed: int = 0) -> Path:
    """Build the pipeline on `device` (a GPU builds it in seconds) and save it as a diffusers folder.
    The scheduler is FLUX.1's dynamically shifting one (Chroma's pipeline always computes FLUX's mu)."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = build_t5_tokenizer(Path(scratch) / "t5")
    tokenizer.model_max_length = 512
    with torch.device(device):
        transformer = ChromaTransformer2DModel(**CHROMA_TRANSFORMER).to(torch.bfloat16)
        t5 = T5EncoderModel(_t5_config(len(tokenizer))).to(torch.bfloat16)
        vae = AutoencoderKL(**FLUX_VAE)
    pipeline = ChromaPipeline(
        transformer=transformer, scheduler=flux_scheduler(), vae=vae, text_encoder=t5, tokenizer=tokenizer
    )
    pipeline.save_pretrained(out_dir)
    return out_dir


def parameter_counts() -> dict[str, int]:
    """Parameters per component, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        return {
            "transformer": count_parameters(ChromaTransformer2DModel(**CHROMA_TRANSFORMER)),
            "vae": count_parameters(AutoencoderKL(**FLUX_VAE)),
            "text_encoder": count_parameters(T5EncoderModel(_t5_config(32128))),
        }


if __name__ == "__main__":
    # `python -m bench.full_chroma` prints the parameter counts; `... OUT_DIR` builds the pipeline there.
    if len(sys.argv) > 1:
        build_full_chroma(Path(sys.argv[1]), device="cuda" if torch.cuda.is_available() else "cpu")
    for component, count in parameter_counts().items():
        print(f"{component:16} {count / 1e6:9.1f} M")

"""What the real-size benchmark pipelines (bench/full_sdxl.py, bench/full_flux.py) share: the shape of
the KL autoencoder both families use, which differ only in latent channels and latent scaling, and
parameter counting."""

from __future__ import annotations

from typing import Any

import torch


def kl_vae_config(*, latent_channels: int, scaling_factor: float, **latent_options: Any) -> dict[str, Any]:
    """AutoencoderKL's arguments for the 1024 px, four-level (128-256-512-512) autoencoder of SDXL and
    FLUX; `latent_options` holds what only one family sets (FLUX's shift and its missing quant convs)."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": latent_channels,
        "sample_size": 1024,
        "scaling_factor": scaling_factor,
        **latent_options,
    }


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# Qwen3-4B's text model (FLUX.2 [klein] 4B and Z-Image read their prompts with it).
QWEN3_4B: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}

"""A tiny Z-Image pipeline built offline: `ZImagePipeline` with a random `ZImageTransformer2DModel`, a
FLUX.1-shaped 16-channel `AutoencoderKL` (no quant convs, shifted and scaled latents), a random
`Qwen3Model` text encoder with tiny_qwen's chat tokenizer, and Z-Image-Turbo's scheduler config.

Seeded random weights, saved with `save_pretrained`, so the folder loads exactly like a real checkpoint
(Tongyi-MAI/Z-Image-Turbo's model_index.json wires the same five classes).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3Model

from trainer.synthetic import tiny
from trainer.synthetic.tiny_qwen import IM_END, build_qwen_tokenizer

LATENT_CHANNELS = 16  # the FLUX.1 VAE's
# Z-Image-Turbo's scheduler_config.json: a static shift of 3 (the base Z-Image's is 6), no dynamic shifting.
TURBO_SCHEDULER = {"num_train_timesteps": 1000, "use_dynamic_shifting": False, "shift": 3.0}
# The pipeline's default max_sequence_length: the text encoder must hold 512 positions.
TEXT_POSITIONS = 1024


@dataclass(frozen=True)
class ZImageShape:
    dim: int
    heads: int  # dim / heads == sum(axes_dims)
    layers: int  # main ZImageTransformerBlocks
    refiner_layers: int  # noise_refiner and context_refiner blocks each
    axes_dims: tuple[int, int, int]  # RoPE over (caption/frame, row, column); each even
    text_hidden: int
    text_layers: int
    text_heads: int


Z_IMAGE_PRESETS: dict[tiny.Preset, ZImageShape] = {
    # 0.36M parameters (0.29M of them the timestep MLP, whose 1024 mid size diffusers hard-codes).
    "tiny": ZImageShape(32, 2, 2, 1, (4, 6, 6), 32, 2, 2),
    # The CPU benchmark's transformer: 17.2M parameters (7 main blocks, 2 + 2 refiner blocks).
    "small": ZImageShape(320, 5, 7, 2, (16, 24, 24), 128, 2, 4),
}


def build_z_image(out_dir: Path, *, preset: tiny.Preset, shapes_base: bool) -> Path:
    """A random Z-Image-shaped pipeline at `out_dir`; the shapes base is the `tiny` preset for now."""
    shape = Z_IMAGE_PRESETS["tiny" if shapes_base else preset]
    vae_shape = tiny.PRESETS["tiny" if shapes_base else preset]
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = build_qwen_tokenizer(Path(scratch))
    ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**TURBO_SCHEDULER),
        vae=flux_shaped_vae(vae_shape.vae_channels, sample_size=vae_shape.sample_size * 8),
        text_encoder=qwen3_encoder(tokenizer, shape),
        tokenizer=tokenizer,
        transformer=z_image_transformer(shape),
    ).save_pretrained(out_dir)
    return out_dir


def z_image_transformer(shape: ZImageShape) -> ZImageTransformer2DModel:
    """The real model's layout (2x2 patches, one frame, qk-norm, RoPE theta 256) at `shape`'s widths."""
    return ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=LATENT_CHANNELS,
        dim=shape.dim,
        n_layers=shape.layers,
        n_refiner_layers=shape.refiner_layers,
        n_heads=shape.heads,
        n_kv_heads=shape.heads,
        norm_eps=1e-5,
        qk_norm=True,
        cap_feat_dim=shape.text_hidden,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=list(shape.axes_dims),
        axes_lens=[1024, 512, 512],
    )


def qwen3_encoder(tokenizer: Qwen2Tokenizer, shape: ZImageShape) -> Qwen3Model:
    """A random Qwen3 decoder (the pipeline reads its hidden states, so no LM head), with the tokenizer's
    special-token ids."""
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=shape.text_hidden,
        intermediate_size=2 * shape.text_hidden,
        num_hidden_layers=shape.text_layers,
        num_attention_heads=shape.text_heads,
        num_key_value_heads=1,
        head_dim=shape.text_hidden // shape.text_heads,
        max_position_embeddings=TEXT_POSITIONS,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},  # Qwen3's theta
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        bos_token_id=None,
        architectures=["Qwen3ForCausalLM"],
    )
    return Qwen3Model(config)


def flux_shaped_vae(channels: tuple[int, ...], *, sample_size: int) -> AutoencoderKL:
    """A random FLUX.1-shaped VAE (16 latent channels, no quant convs, factor 2^(len-1)), calibrated as
    tiny._make_latents_realistic does: a near-deterministic posterior and shift/scale factors that make
    (mean - shift_factor) * scaling_factor about zero-mean and unit-variance."""
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=channels,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=sample_size,
        use_quant_conv=False,
        use_post_quant_conv=False,
        force_upcast=True,
    )
    _calibrate(vae)
    return vae


@torch.no_grad()
def _calibrate(vae: AutoencoderKL) -> None:
    """Without a quant conv the posterior's log-variance half comes straight from encoder.conv_out: pin it
    to tiny.LATENT_LOGVAR, then record the latents' mean and std on blocky random images."""
    vae.encoder.conv_out.weight[LATENT_CHANNELS:] = 0.0
    vae.encoder.conv_out.bias[LATENT_CHANNELS:] = tiny.LATENT_LOGVAR
    size = vae.config.sample_size
    blocks = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    images = torch.nn.functional.interpolate(blocks, size=(size, size), mode="nearest")
    latents = vae.encode(images).latent_dist.mean
    vae.register_to_config(shift_factor=float(latents.mean()), scaling_factor=1.0 / float(latents.std()))

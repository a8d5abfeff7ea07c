"""A tiny FLUX.2 [klein] pipeline built offline: `Flux2Transformer2DModel`, `AutoencoderKLFlux2`, a Qwen3
text encoder with tiny_qwen's tokenizer, and FLUX.2's flow-matching scheduler. Random, seeded weights;
saved with `save_pretrained`, so it loads exactly like a real checkpoint.

What is kept of the real models (diffusers' scripts/convert_flux2_to_diffusers.py configs):
* transformer: 128 input channels (2x2-patchified 32-channel latents), 4 RoPE axes (T, H, W, L) summing
  to the head width, `joint_attention_dim` = 3 x the text width (the pipeline stacks three hidden states),
  no guidance embedding (klein), mlp_ratio 3, RoPE theta 2000;
* VAE: 4 blocks (factor 8), 32 latent channels, and the batch-norm running statistics that normalise the
  patchified latents; here calibrated so the normalised latents have unit variance, as `tiny_vae`
  calibrates the KL VAEs' `scaling_factor`;
* text encoder: Qwen3-4B's 36 layers, so that `hidden_states[27]` (the deepest of klein's 9, 18, 27) is an
  intermediate, un-normed state as in the real model, and dev's 10, 20, 30 exist too (the tests run dev's
  pipeline on these parts); narrow (32 wide), so 512 tokens through it stay cheap;
* the pipeline is the *base* klein (`is_distilled=False`): it samples with real classifier-free guidance
  against "" at guidance_scale 4.0 by default, as FLUX.2-klein-base-4B does.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Transformer2DModel
from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3ForCausalLM

from trainer.synthetic import tiny
from trainer.synthetic.tiny_flow import flux_scheduler
from trainer.synthetic.tiny_qwen import IM_END, build_qwen_tokenizer

LATENT_CHANNELS = 32  # AutoencoderKLFlux2's; its batch norm covers the 4 x 32 = 128 patchified channels
TEXT_LAYERS_USED = 3  # the pipeline stacks hidden_states 9, 18 and 27
TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


@dataclass(frozen=True)
class Flux2Shape:
    heads: int
    head_dim: int  # = sum(rope_axes)
    double_layers: int
    single_layers: int
    text_hidden: int
    text_heads: int
    text_layers: int  # more than 30: klein reads hidden_states[27], dev [30]
    rope_axes: tuple[int, int, int, int]


FLUX2_PRESETS: dict[tiny.Preset, Flux2Shape] = {
    "tiny": Flux2Shape(4, 16, 2, 2, 32, 2, 36, (4, 4, 4, 4)),
    # The CPU benchmark's size: a 17M-parameter transformer (klein-4B has 5 double + 20 single blocks).
    "small": Flux2Shape(4, 64, 5, 10, 64, 4, 36, (16, 16, 16, 16)),
}


def build_flux2(out_dir: Path, *, preset: tiny.Preset, shapes_base: bool) -> Path:
    """A random FLUX.2 [klein]-shaped pipeline (base klein: real CFG); the shapes base is `tiny`."""
    shape = FLUX2_PRESETS["tiny" if shapes_base else preset]
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = build_qwen_tokenizer(Path(scratch), template_text=[TEMPLATE.format("")])
    Flux2KleinPipeline(
        scheduler=flux_scheduler(),  # FLUX.2 ships FLUX.1-dev's scheduler config; mu replaces the shift
        vae=tiny_flux2_vae(tiny.PRESETS["tiny" if shapes_base else preset]),
        text_encoder=Qwen3ForCausalLM(_qwen3_config(tokenizer, shape)),
        tokenizer=tokenizer,
        transformer=_transformer(shape),
        is_distilled=False,
    ).save_pretrained(out_dir)
    return out_dir


def _qwen3_config(tokenizer: Qwen2Tokenizer, shape: Flux2Shape) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=shape.text_hidden,
        intermediate_size=2 * shape.text_hidden,
        num_hidden_layers=shape.text_layers,
        num_attention_heads=shape.text_heads,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id,
    )


def _transformer(shape: Flux2Shape) -> Flux2Transformer2DModel:
    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,
        num_layers=shape.double_layers,
        num_single_layers=shape.single_layers,
        attention_head_dim=shape.head_dim,
        num_attention_heads=shape.heads,
        joint_attention_dim=TEXT_LAYERS_USED * shape.text_hidden,
        mlp_ratio=3.0,
        axes_dims_rope=shape.rope_axes,
        rope_theta=2000,
        guidance_embeds=False,
    )


def tiny_flux2_vae(shape: tiny.PresetShape) -> AutoencoderKLFlux2:
    """A random AutoencoderKLFlux2 of the preset's widths, calibrated like `tiny.tiny_vae`: a nearly
    deterministic posterior, and batch-norm statistics that give the patchified latents zero mean and
    unit variance per channel."""
    n = len(shape.vae_channels)
    vae = AutoencoderKLFlux2(
        block_out_channels=shape.vae_channels,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=shape.sample_size * 2 ** (n - 1),
    )
    _calibrate(vae)
    return vae.eval()


@torch.no_grad()
def _calibrate(vae: AutoencoderKLFlux2) -> None:
    """Posterior log-variance tiny.LATENT_LOGVAR, and bn.running_mean / running_var measured on blocky
    random-colour images' patchified latent means (what the pipeline normalises with)."""
    vae.quant_conv.weight[LATENT_CHANNELS:] = 0.0
    vae.quant_conv.bias[LATENT_CHANNELS:] = tiny.LATENT_LOGVAR
    size = vae.config.sample_size
    generator = torch.Generator().manual_seed(0)
    blocks = torch.rand(16, 3, 8, 8, generator=generator) * 2 - 1
    images = torch.nn.functional.interpolate(blocks, size=(size, size), mode="nearest")
    set_bn_statistics(vae, vae.encode(images).latent_dist.mean)


@torch.no_grad()
def set_bn_statistics(vae: AutoencoderKLFlux2, latents: torch.Tensor) -> None:
    """bn.running_mean / running_var such that the pipelines' normalisation, (z - mean) /
    sqrt(var + eps), gives the 2x2-patchified `latents` (N, 32, h, w) zero mean and unit variance per
    channel."""
    b, c, h, w = latents.shape
    patches = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, -1)
    channel_var = patches.var(dim=(0, 2)) - vae.config.batch_norm_eps
    vae.bn.running_mean.copy_(patches.mean(dim=(0, 2)))
    vae.bn.running_var.copy_(channel_var.clamp_min(1e-6))

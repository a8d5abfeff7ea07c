"""A tiny Qwen-Image pipeline built offline: `QwenImagePipeline` with a random QwenImage transformer, a
random `AutoencoderKLQwenImage` (the video VAE, run on one frame), a random Qwen2.5-VL text encoder and
the shared tiny Qwen tokenizer (tiny_qwen.py). Weights are random and seeded; saved with
`save_pretrained`, so it loads exactly as a real checkpoint does.

Two facts of the real model are reproduced because training depends on them:
- The pipeline drops the first 34 tokens of its prompt template (`prompt_template_encode_start_idx`, a
  hard-coded count for the real Qwen2.5 vocabulary). The tiny tokenizer is trained on the template's
  words, so each is one token as in the real vocabulary and the 34 dropped tokens are exactly the
  template's system block and `<|im_start|>user\\n`; `build_qwen_image` checks it.
- The VAE's latents are normalised per channel by `latents_mean`/`latents_std` in its config. The random
  encoder is made near-deterministic and those constants are measured on blocky images, so that
  normalised latents have about unit variance per channel, as a trained VAE's do.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from transformers import AddedToken, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

from trainer.families.qwen_image import PROMPT_TEMPLATE, TEMPLATE_DROP
from trainer.synthetic import tiny
from trainer.synthetic.tiny_qwen import IM_END, IM_START, build_qwen_tokenizer

LATENT_CHANNELS = 16  # z_dim of the real VAE
# Qwen2.5-VL's vision special tokens: the config needs their ids (the text-to-image path never uses them).
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
# Qwen/Qwen-Image scheduler/scheduler_config.json (Qwen-Image-2512's is the same).
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
    "invert_sigmas": False,
    "stochastic_sampling": False,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
}
DECODED_STD = 0.5  # pixel std in [-1, 1] of the decoded calibration images
CALIBRATION_SIZE = 32  # pixels of the blocky images the VAE's latent statistics are measured on


@dataclass(frozen=True)
class QwenShape:
    heads: int
    head_dim: int
    layers: int
    rope_axes: tuple[int, int, int]  # sums to head_dim (real: 16, 56, 56 of 128)
    text_hidden: int  # = the transformer's joint_attention_dim (real: 3584)
    text_layers: int
    mrope_section: tuple[int, int, int]  # sums to the text encoder's head_dim // 2 (real: 16, 24, 24)
    vae_base: int  # real: 96


QWEN_PRESETS: dict[tiny.Preset, QwenShape] = {
    "tiny": QwenShape(2, 32, 2, (8, 12, 12), 32, 2, (2, 3, 3), 8),
    # The CPU benchmark's size: a 6-block transformer of width 256 (about 14M parameters).
    "small": QwenShape(4, 64, 6, (16, 24, 24), 128, 2, (8, 12, 12), 16),
}


def build_qwen_image(out_dir: Path, *, preset: tiny.Preset, shapes_base: bool) -> Path:
    """A random Qwen-Image-shaped pipeline saved at `out_dir` (the shapes base is the tiny preset)."""
    shape = QWEN_PRESETS["tiny" if shapes_base else preset]
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = qwen_image_tokenizer(Path(scratch))
    QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
        vae=qwen_vae(shape),
        text_encoder=_text_encoder(tokenizer, shape),
        tokenizer=tokenizer,
        transformer=_transformer(shape),
    ).save_pretrained(out_dir)
    return out_dir


def qwen_image_tokenizer(directory: Path) -> Qwen2Tokenizer:
    """The tiny Qwen tokenizer trained on the template's words, with the vision special tokens added;
    raises if the pipeline's drop of TEMPLATE_DROP tokens would not remove exactly the template's
    prefix (what precedes the prompt)."""
    words = PROMPT_TEMPLATE.replace(IM_START, "").replace(IM_END, "").format("")
    tokenizer = build_qwen_tokenizer(directory, template_text=[words, " " + words])
    tokenizer.add_tokens([AddedToken(token, special=True) for token in VISION_TOKENS])
    prefix = tokenizer(PROMPT_TEMPLATE.split("{}")[0]).input_ids
    templated = tokenizer(PROMPT_TEMPLATE.format("a red circle")).input_ids
    if len(prefix) != TEMPLATE_DROP or templated[:TEMPLATE_DROP] != prefix:
        raise RuntimeError(f"the template prefix is {len(prefix)} tiny tokens, not {TEMPLATE_DROP}")
    return tokenizer


def _text_encoder(tokenizer: Qwen2Tokenizer, shape: QwenShape) -> Qwen2_5_VLForConditionalGeneration:
    """A Qwen2.5-VL model of the preset's width (transformers always builds its vision tower too)."""
    ids = tokenizer.convert_tokens_to_ids
    heads = 2
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": shape.text_hidden,
        "intermediate_size": shape.text_hidden * 2,
        "num_hidden_layers": shape.text_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 1,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1e6,
            "mrope_section": list(shape.mrope_section),
        },
        "bos_token_id": tokenizer.pad_token_id,
        "eos_token_id": ids(IM_END),
        "pad_token_id": tokenizer.pad_token_id,
    }
    assert sum(shape.mrope_section) == shape.text_hidden // heads // 2, "mrope_section sums to head_dim / 2"
    vision = {
        "depth": 1,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_heads": 2,
        "out_hidden_size": shape.text_hidden,
        "fullatt_block_indexes": [0],
    }
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        vision_start_token_id=ids(VISION_TOKENS[0]),
        vision_end_token_id=ids(VISION_TOKENS[1]),
        image_token_id=ids(VISION_TOKENS[2]),
        video_token_id=ids(VISION_TOKENS[3]),
        tie_word_embeddings=False,
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def _transformer(shape: QwenShape) -> QwenImageTransformer2DModel:
    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=LATENT_CHANNELS * 4,  # 2x2 packed latents
        out_channels=LATENT_CHANNELS,
        num_layers=shape.layers,
        attention_head_dim=shape.head_dim,
        num_attention_heads=shape.heads,
        joint_attention_dim=shape.text_hidden,
        guidance_embeds=False,
        axes_dims_rope=shape.rope_axes,
    )


def qwen_vae(shape: QwenShape) -> AutoencoderKLQwenImage:
    """A random Qwen-Image VAE of the preset's width: the real one's z_dim and three downsamples (factor
    8), calibrated as a trained one (`_calibrate`)."""
    vae = AutoencoderKLQwenImage(
        base_dim=shape.vae_base,
        z_dim=LATENT_CHANNELS,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[False, True, True],
    )
    _calibrate(vae)
    return vae.eval()


@torch.no_grad()
def _calibrate(vae: AutoencoderKLQwenImage) -> None:
    """Give the random VAE what a trained one has and training depends on: a near-deterministic posterior
    (log-variance LATENT_LOGVAR, as tiny._make_latents_realistic does for the KL VAE), per-channel
    latents_mean/latents_std measured on blocky random-colour images (so (z - mean) / std has unit
    variance per channel), and a decoder that responds to its latents (`_calibrate_decoder`)."""
    channels = LATENT_CHANNELS
    vae.quant_conv.weight[channels:] = 0.0
    vae.quant_conv.bias[channels:] = tiny.LATENT_LOGVAR
    generator = torch.Generator().manual_seed(0)
    blocks = torch.rand(16, 3, 8, 8, generator=generator) * 2 - 1
    images = torch.nn.functional.interpolate(blocks, size=(CALIBRATION_SIZE,) * 2, mode="nearest")
    latents = vae.encode(images.unsqueeze(2)).latent_dist.mean  # (16, C, 1, h, w)
    per_channel = latents.transpose(0, 1).reshape(channels, -1)
    mean, std = per_channel.mean(1), per_channel.std(1)
    vae.register_to_config(
        latents_mean=[round(float(v), 6) for v in mean], latents_std=[round(float(v), 6) for v in std]
    )
    _calibrate_decoder(vae, mean, std, latents)


def _calibrate_decoder(
    vae: AutoencoderKLQwenImage, mean: torch.Tensor, std: torch.Tensor, latents: torch.Tensor
) -> None:
    """The random decoder sees latents of std ~0.06, far below its biases, and drew nearly the same image
    for any latent. Its 1x1 post_quant_conv is made to read (z - mean) / std, and its last conv is
    scaled so that the decoded calibration latents have pixel std DECODED_STD, as real images do."""
    conv = vae.post_quant_conv
    conv.bias.copy_(conv.bias - (conv.weight[..., 0, 0, 0] / std) @ mean)
    conv.weight.div_(std.view(1, -1, 1, 1, 1))
    out = vae.decoder.conv_out
    spread = float(vae.decode(latents).sample.std())
    out.weight.mul_(DECODED_STD / spread)
    out.bias.mul_(DECODED_STD / spread)

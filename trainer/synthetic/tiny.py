"""Tiny pipelines built entirely offline, for tests, demos and benchmarks: SD and SDXL here, and
`build_tiny_pipeline`, which builds any family's with the builder its `FamilyFacts` names.

Weights are random (seeded); the CLIP BPE tokenizer is trained here on a small word list and written as
vocab.json + merges.txt, and the text encoders take their special-token ids from it. The pipelines are
saved with `save_pretrained`, so everything downstream loads them exactly like a real checkpoint.
"""

from __future__ import annotations

import importlib
import itertools
import json
import tempfile
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from trainer.families import FAMILIES, FamilyName

Family = FamilyName
Preset = Literal["tiny", "small"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77
# Words the demo captions use, plus some filler; the tokenizer still encodes any text byte by byte.
CORPUS = (
    "a an the of on in with and photo painting drawing picture image style art small large big tiny "
    "red orange yellow green blue purple pink white black gray brown warm cool bright dark light "
    "circle square triangle ring cross star shape shapes background sky water field "
    "cartoon pixel sketch watercolor oil sunset night day cat dog house tree flower mountain"
)
NUM_MERGES = 300


@dataclass(frozen=True)
class PresetShape:
    unet_channels: tuple[int, ...]
    layers_per_block: int
    head_dims: tuple[int, ...]
    text_hidden: tuple[int, int]
    text_layers: int
    vae_channels: tuple[int, ...]
    time_embed_dim: int
    sample_size: int


PRESETS: dict[Preset, PresetShape] = {
    "tiny": PresetShape((32, 64), 1, (2, 4), (32, 32), 2, (8, 16, 16, 16), 8, 8),
    # The issue-6 "small" SDXL-shaped model: UNet 64/128/256, 2 layers per block, ~25M parameters.
    "small": PresetShape((64, 128, 256), 2, (2, 4, 8), (64, 128), 2, (32, 64, 64, 64), 32, 16),
}


class TinyBuilder(Protocol):
    """What `FamilyFacts.tiny_builder` names: builds and saves a random pipeline of its family at
    `out_dir`, of the preset's size, or of the size the pre-trained shapes bases use (`shapes_base`)."""

    def __call__(self, out_dir: Path, *, preset: Preset, shapes_base: bool) -> Path: ...


def build_tiny_pipeline(
    family: Family, out_dir: Path, *, preset: Preset = "tiny", seed: int = 0, shapes_base: bool = False
) -> Path:
    """Build a random-weight pipeline of `family` and save it as a diffusers folder at `out_dir`."""
    module, function = FAMILIES[family].tiny_builder.split(":")
    builder: TinyBuilder = getattr(importlib.import_module(module), function)
    torch.manual_seed(seed)
    return builder(out_dir, preset=preset, shapes_base=shapes_base)


def build_sd(out_dir: Path, *, preset: Preset, shapes_base: bool) -> Path:
    """A random SD 1.x-shaped pipeline (one CLIP encoder); the shapes base is the `tiny` preset."""
    shape = PRESETS["tiny" if shapes_base else preset]
    tokenizer = _scratch_tokenizer()
    pipeline = StableDiffusionPipeline(
        **_unet_components(shape, tokenizer, _unet(shape, cross_dim=shape.text_hidden[0])),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(out_dir)
    return out_dir


def build_sdxl(out_dir: Path, *, preset: Preset, shapes_base: bool) -> Path:
    """A random SDXL-shaped pipeline (two CLIP encoders, text-time conditioning)."""
    shape = PRESETS["tiny" if shapes_base else preset]
    tokenizer = _scratch_tokenizer()
    unet = _unet(
        shape,
        cross_dim=sum(shape.text_hidden),
        addition_embed_type="text_time",
        addition_time_embed_dim=shape.time_embed_dim,
        projection_class_embeddings_input_dim=6 * shape.time_embed_dim + shape.text_hidden[1],
    )
    config = _text_config(tokenizer, shape.text_hidden[1], shape.text_layers)
    pipeline = StableDiffusionXLPipeline(
        **_unet_components(shape, tokenizer, unet),
        tokenizer_2=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(config),
    )
    pipeline.save_pretrained(out_dir)
    return out_dir


def _scratch_tokenizer() -> CLIPTokenizer:
    with tempfile.TemporaryDirectory() as scratch:
        return build_tokenizer(Path(scratch))


def _unet_components(
    shape: PresetShape, tokenizer: CLIPTokenizer, unet: UNet2DConditionModel
) -> dict[str, Any]:
    return {
        "unet": unet,
        "vae": tiny_vae(shape),
        "scheduler": sd_scheduler(),
        "tokenizer": tokenizer,
        "text_encoder": CLIPTextModel(_text_config(tokenizer, shape.text_hidden[0], shape.text_layers)),
    }


def build_tokenizer(directory: Path) -> CLIPTokenizer:
    """Write a small CLIP BPE vocabulary to `directory` and load a `CLIPTokenizer` from it."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = _train_bpe()
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    # from_pretrained reads vocab.json + merges.txt the same way in transformers 4 and 5.
    tokenizer: CLIPTokenizer = CLIPTokenizer.from_pretrained(
        str(directory), model_max_length=MAX_LENGTH, pad_token=EOS
    )
    return tokenizer


@cache
def _train_bpe() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """Byte-level symbols (alone and word-final), then NUM_MERGES greedy merges over CORPUS."""
    alphabet = list(_bytes_to_unicode().values())
    symbols = alphabet + [s + "</w>" for s in alphabet]
    words = Counter((*w[:-1], w[-1] + "</w>") for w in CORPUS.split())
    merges: list[tuple[str, str]] = []
    for _ in range(NUM_MERGES):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        symbols.append(best[0] + best[1])
        words = Counter({_merge(word, best): count for word, count in words.items()})
    vocab = {token: i for i, token in enumerate(dict.fromkeys([*symbols, BOS, EOS]))}
    return vocab, tuple(merges)


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _text_config(tokenizer: CLIPTokenizer, hidden: int, layers: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_attention_heads=4,
        num_hidden_layers=layers,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
    )


def _unet(shape: PresetShape, *, cross_dim: int, **extra: Any) -> UNet2DConditionModel:
    n = len(shape.unet_channels)
    return UNet2DConditionModel(
        sample_size=shape.sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=shape.unet_channels,
        layers_per_block=shape.layers_per_block,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        attention_head_dim=shape.head_dims,
        cross_attention_dim=cross_dim,
        use_linear_projection=True,
        norm_num_groups=min(32, shape.unet_channels[0]),
        **extra,
    )


def tiny_vae(shape: PresetShape, *, latent_channels: int = 4, shifted: bool = False) -> AutoencoderKL:
    """A random VAE of the preset's widths; `shifted` also records the latents' mean as shift_factor
    (SD3 and FLUX latents are (sample - shift_factor) * scaling_factor)."""
    n = len(shape.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=shape.vae_channels,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=shape.sample_size * 2 ** (n - 1),
        use_quant_conv=True,
    )
    _make_latents_realistic(vae, shifted=shifted)
    return vae


LATENT_LOGVAR = -12.0  # posterior std exp(-6) ~ 0.0025, as narrow as a trained VAE's


@torch.no_grad()
def _make_latents_realistic(vae: AutoencoderKL, *, shifted: bool = False) -> None:
    """Give the random VAE the two properties of a trained one that training depends on.

    A random encoder's posterior has log-variance ~0, so a latent sample is mostly the VAE's own noise and
    says little about the image; a trained one is nearly deterministic. And a trained VAE's
    `scaling_factor` makes latents unit-variance, which the noise schedule assumes; the SD default 0.18215
    would shrink this encoder's latents far below the noise. Calibrated on blocky random-colour images.
    """
    channels = vae.config.latent_channels
    vae.quant_conv.weight[channels:] = 0.0
    vae.quant_conv.bias[channels:] = LATENT_LOGVAR
    size = vae.config.sample_size
    generator = torch.Generator().manual_seed(0)
    blocks = torch.rand(16, 3, 8, 8, generator=generator) * 2 - 1
    images = torch.nn.functional.interpolate(blocks, size=(size, size), mode="nearest")
    latents = vae.encode(images).latent_dist.mean
    if shifted:
        vae.register_to_config(shift_factor=float(latents.mean()), scaling_factor=1.0 / float(latents.std()))
    else:
        vae.register_to_config(scaling_factor=1.0 / float(latents.std()))


def sd_scheduler() -> EulerDiscreteScheduler:
    # The SD/SDXL noise schedule; training reads it back as a DDPMScheduler, as the reference does.
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
    )

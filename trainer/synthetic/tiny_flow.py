"""Tiny SD3 and FLUX pipelines built offline: an MMDiT or FLUX transformer, a 16-channel VAE, CLIP
encoders with tiny.py's BPE tokenizer, and a T5 encoder whose sentencepiece-style (Unigram) tokenizer is
trained here on the fly with `tokenizers`. Random, seeded weights; saved with `save_pretrained`, so they
load exactly like a real checkpoint.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel, T5TokenizerFast

from trainer.synthetic import tiny

LATENT_CHANNELS = 16
T5_LENGTH = 32  # the tiny T5 tokenizer's model_max_length: the shapes captions need fewer tokens
T5_VOCAB = 400


@dataclass(frozen=True)
class FlowShape:
    heads: int
    head_dim: int
    layers: int  # SD3 joint blocks / FLUX double-stream blocks
    single_layers: int  # FLUX single-stream blocks
    clip_hidden: int
    t5_hidden: int
    t5_layers: int
    rope_axes: tuple[int, int, int]  # FLUX: sums to head_dim
    sd3_patch: int = 2  # SD3's patch size (SD3 itself: 2)


FLOW_PRESETS: dict[tiny.Preset, FlowShape] = {
    "tiny": FlowShape(2, 16, 2, 2, 32, 32, 2, (4, 6, 6)),
    # The CPU benchmark's transformers (bench.trainer_step --presets small): SD3 25.2M, FLUX 32.8M.
    "small": FlowShape(5, 64, 7, 4, 64, 128, 2, (16, 24, 24)),
}
# The pre-trained shapes bases' transformers (SD3 1.0M, FLUX 1.5M parameters): about the shapes UNets'
# size (1.0M); the `tiny` ones (0.1M) learnt colour and background but drew shapes at chance. SD3 takes
# 1x1 patches here: with SD3's 2x2 an 8x8 latent is 16 tokens, and it drew one shape for every caption
# (kind 0.20 of captions right), where FLUX, whose packing gives 16 tokens too, reached 0.76.
SHAPES_FLOW = FlowShape(4, 24, 3, 3, 32, 32, 2, (8, 8, 8), sd3_patch=1)


def build_sd3(out_dir: Path, *, preset: tiny.Preset, shapes_base: bool) -> Path:
    """A random SD3-shaped pipeline: MMDiT, two CLIP encoders and T5."""
    shape, unet_shape = SHAPES_FLOW if shapes_base else FLOW_PRESETS[preset], tiny.PRESETS[preset]
    parts = _text_and_vae(shape, unet_shape)
    clip_config = tiny._text_config(parts.clip_tokenizer, shape.clip_hidden, shape.t5_layers)
    StableDiffusion3Pipeline(
        transformer=_sd3_transformer(shape, unet_shape.sample_size),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=parts.vae,
        text_encoder=CLIPTextModelWithProjection(clip_config),
        tokenizer=parts.clip_tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(clip_config),
        tokenizer_2=parts.clip_tokenizer,
        text_encoder_3=parts.t5,
        tokenizer_3=parts.t5_tokenizer,
    ).save_pretrained(out_dir)
    return out_dir


def build_flux(out_dir: Path, *, preset: tiny.Preset, shapes_base: bool) -> Path:
    """A random FLUX.1-shaped pipeline: guidance-distilled like FLUX.1-dev, except the shapes base,
    which is like schnell (no guidance embedding): a guidance-distilled model needs a teacher with
    classifier-free guidance first, so the shapes base samples with true guidance instead."""
    shape, unet_shape = SHAPES_FLOW if shapes_base else FLOW_PRESETS[preset], tiny.PRESETS[preset]
    parts = _text_and_vae(shape, unet_shape)
    clip_config = tiny._text_config(parts.clip_tokenizer, shape.clip_hidden, shape.t5_layers)
    FluxPipeline(
        transformer=_flux_transformer(shape, guidance_embeds=not shapes_base),
        scheduler=flux_scheduler(),
        vae=parts.vae,
        text_encoder=CLIPTextModel(clip_config),
        tokenizer=parts.clip_tokenizer,
        text_encoder_2=parts.t5,
        tokenizer_2=parts.t5_tokenizer,
    ).save_pretrained(out_dir)
    return out_dir


@dataclass
class _TextAndVae:
    clip_tokenizer: Any
    t5_tokenizer: T5TokenizerFast
    t5: T5EncoderModel
    vae: Any


def _text_and_vae(shape: FlowShape, unet_shape: tiny.PresetShape) -> _TextAndVae:
    """The parts SD3 and FLUX share: the tokenizers, a T5 encoder and the 16-channel shifted VAE."""
    with tempfile.TemporaryDirectory() as scratch:
        clip_tokenizer = tiny.build_tokenizer(Path(scratch) / "clip")
        t5_tokenizer = build_t5_tokenizer(Path(scratch) / "t5")
    t5 = T5EncoderModel(_t5_config(t5_tokenizer, shape))
    vae = tiny.tiny_vae(unet_shape, latent_channels=LATENT_CHANNELS, shifted=True)
    return _TextAndVae(clip_tokenizer, t5_tokenizer, t5, vae)


def flux_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """FLUX.1's scheduler config: the shift grows with the image's token count."""
    return FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def build_t5_tokenizer(directory: Path) -> T5TokenizerFast:
    """A Unigram (sentencepiece-style) tokenizer trained on tiny.CORPUS, wrapped as T5's, saved and
    read back from `directory` (tokenizer.json), so it loads as a real T5 tokenizer does."""
    model = Tokenizer(models.Unigram())
    model.normalizer = normalizers.NFKC()
    model.pre_tokenizer = pre_tokenizers.Metaspace()
    model.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=T5_VOCAB, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    model.train_from_iterator([tiny.CORPUS] * 4, trainer)
    eos = model.token_to_id("</s>")
    model.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    wrapped = T5TokenizerFast(
        tokenizer_object=model,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=T5_LENGTH,
    )
    wrapped.save_pretrained(directory)
    loaded: T5TokenizerFast = T5TokenizerFast.from_pretrained(str(directory))
    return loaded


def _t5_config(tokenizer: T5TokenizerFast, shape: FlowShape) -> T5Config:
    return T5Config(
        vocab_size=len(tokenizer),
        d_model=shape.t5_hidden,
        d_ff=shape.t5_hidden * 2,
        d_kv=shape.t5_hidden // 4,
        num_layers=shape.t5_layers,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )


def _sd3_transformer(shape: FlowShape, latent_size: int) -> SD3Transformer2DModel:
    width = shape.heads * shape.head_dim
    return SD3Transformer2DModel(
        sample_size=latent_size,
        patch_size=shape.sd3_patch,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_layers=shape.layers,
        attention_head_dim=shape.head_dim,
        num_attention_heads=shape.heads,
        joint_attention_dim=shape.t5_hidden,
        caption_projection_dim=width,
        pooled_projection_dim=2 * shape.clip_hidden,
        pos_embed_max_size=max(32, latent_size),
    )


def flux_shaped(shape: FlowShape) -> dict[str, Any]:
    """The config a FLUX.1-shaped transformer (FLUX.1, Chroma) takes from `shape`: FLUX's packing (64
    input features = 16 channels x 2x2, patch size 1), the shape's blocks, heads and T5 width."""
    return {
        "patch_size": 1,
        "in_channels": LATENT_CHANNELS * 4,
        "num_layers": shape.layers,
        "num_single_layers": shape.single_layers,
        "attention_head_dim": shape.head_dim,
        "num_attention_heads": shape.heads,
        "joint_attention_dim": shape.t5_hidden,
        "axes_dims_rope": shape.rope_axes,
    }


def _flux_transformer(shape: FlowShape, *, guidance_embeds: bool) -> FluxTransformer2DModel:
    return FluxTransformer2DModel(
        **flux_shaped(shape), pooled_projection_dim=shape.clip_hidden, guidance_embeds=guidance_embeds
    )

"""A tiny Chroma pipeline built offline: FLUX.1-shaped double/single blocks without per-block modulation
layers (Chroma's `distilled_guidance_layer` approximator makes every block's modulation from the
timestep), the generated T5 tokenizer and a tiny T5 encoder of tiny_flow.py, and FLUX.1's 16-channel
shifted VAE convention (tiny.tiny_vae, calibrated to unit-variance latents). Random, seeded weights, saved
with `save_pretrained`, so the folder loads exactly like a real checkpoint (`ChromaPipeline`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from diffusers import ChromaPipeline, ChromaTransformer2DModel
from transformers import T5EncoderModel

from trainer.synthetic import tiny
from trainer.synthetic.tiny_flow import (
    FLOW_PRESETS,
    LATENT_CHANNELS,
    SHAPES_FLOW,
    FlowShape,
    _t5_config,
    build_t5_tokenizer,
    flux_scheduler,
    flux_shaped,
)

# The approximator's (input channels, hidden width, layers); Chroma1-HD: (64, 5120, 5). The input is the
# sinusoids of the timestep, of a fixed guidance 0 and of the modulation index (channels/4, /4, /2), so
# the channels must be a multiple of 4.
APPROXIMATOR: dict[tiny.Preset, tuple[int, int, int]] = {"tiny": (16, 32, 2), "small": (64, 256, 2)}
SHAPES_APPROXIMATOR = (32, 64, 2)


def build_chroma(out_dir: Path, *, preset: tiny.Preset, shapes_base: bool) -> Path:
    """A random Chroma-shaped pipeline: Chroma transformer, T5 (the only text encoder) and a 16-channel
    VAE, with FLUX.1's dynamically shifting scheduler (Chroma's pipeline always computes FLUX's mu)."""
    shape = SHAPES_FLOW if shapes_base else FLOW_PRESETS[preset]
    approximator = SHAPES_APPROXIMATOR if shapes_base else APPROXIMATOR[preset]
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = build_t5_tokenizer(Path(scratch) / "t5")
    ChromaPipeline(
        scheduler=flux_scheduler(),
        vae=tiny.tiny_vae(tiny.PRESETS[preset], latent_channels=LATENT_CHANNELS, shifted=True),
        text_encoder=T5EncoderModel(_t5_config(tokenizer, shape)),
        tokenizer=tokenizer,
        transformer=chroma_transformer(shape, approximator),
    ).save_pretrained(out_dir)
    return out_dir


def chroma_transformer(shape: FlowShape, approximator: tuple[int, int, int]) -> ChromaTransformer2DModel:
    """FLUX.1's shape (tiny_flow.flux_shaped) and Chroma's modulation approximator."""
    channels, hidden, layers = approximator
    return ChromaTransformer2DModel(
        **flux_shaped(shape),
        approximator_num_channels=channels,
        approximator_hidden_dim=hidden,
        approximator_layers=layers,
    )

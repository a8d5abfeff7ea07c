"""What the base model draws, and how the tests compare drawn images: pixels, and files' mtime and hash."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image


@cache
def plain_pipeline(base_model: Path) -> Any:
    """The base model as diffusers loads it, on the device the worker draws on."""
    pipeline = DiffusionPipeline.from_pretrained(str(base_model))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to("cuda" if torch.cuda.is_available() else "cpu")


def base_model_image(base_model: Path, prompt: str, *, seed: int, steps: int = 2) -> np.ndarray:
    """What a plain diffusers pipeline of the base model draws for `prompt` from `seed`."""
    image = plain_pipeline(base_model)(
        prompt=prompt,
        num_inference_steps=steps,
        guidance_scale=5.0,
        height=32,
        width=32,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    return np.asarray(image, dtype=np.int16)


def pixels(path: Path) -> np.ndarray:
    """The image at `path` as RGB int16 (so differences may go negative)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def file_states(folder: Path) -> dict[str, tuple[int, str]]:
    """mtime and sha256 of every image: a regenerated image gets a new mtime even with equal bytes."""
    return {
        p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted((folder / "images").iterdir())
    }

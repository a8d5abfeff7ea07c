"""Preference datasets on the shapes domain, for a model pre-trained on it (trainer/synthetic/pretrain.py).

- "prefer red": the prompt leaves the colour open ("a circle on a white background"); the chosen image
  draws the shape red, the rejected one green or blue, same shape, place, size and background. The
  pre-trained model picks the colour at random, so the preference decides it: the demo set.
- "hue shift by d": the prompt is a full caption; the chosen image draws the shape with its hue moved by d
  degrees, the rejected one as the base domain draws it. Like MaPO's style sets (chosen = the target,
  rejected = what the base model makes), with the target a controlled distance from the base model.
Torch-free; the same pairs for the same seed.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from trainer.dataset_format import DatasetWriter, EncodedImage, Manifest, read_manifest
from trainer.synthetic.shapes import COLOURS, Drawing, Reading, caption, hue_distance, random_drawing, render

PREFERRED_COLOUR = "red"


class ShapePair(NamedTuple):
    prompt: str
    chosen: Drawing
    rejected: Drawing


def prefer_red_pairs(*, num_pairs: int, seed: int) -> Iterator[ShapePair]:
    """Colour-less prompts; chosen red, rejected green or blue, otherwise the same drawing."""
    rng = random.Random(f"prefer-red-{seed}")
    others = sorted(set(COLOURS) - {PREFERRED_COLOUR})
    for _ in range(num_pairs):
        chosen = random_drawing(rng, colour=PREFERRED_COLOUR)
        rejected = replace(chosen, hue=COLOURS[rng.choice(others)])
        yield ShapePair(caption(chosen, with_colour=False), chosen, rejected)


def hue_shift_pairs(*, num_pairs: int, seed: int, shift: float) -> Iterator[ShapePair]:
    """Full captions; chosen = the drawing with its hue moved by `shift` degrees, rejected = as captioned."""
    rng = random.Random(f"hue-shift-{seed}")
    for _ in range(num_pairs):
        rejected = random_drawing(rng)
        yield ShapePair(caption(rejected), replace(rejected, hue=rejected.hue + shift), rejected)


def write_dataset(out_dir: Path, pairs: Iterator[ShapePair], *, resolution: int) -> Manifest:
    """The pairs as PNGs in the canonical dataset layout."""
    with DatasetWriter(out_dir) as writer:
        for pair in pairs:
            writer.add_pair(
                pair.prompt,
                chosen=EncodedImage(_png(render(pair.chosen, resolution))),
                rejected=EncodedImage(_png(render(pair.rejected, resolution))),
            )
    return read_manifest(out_dir)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def moved_towards(read: Reading, asked: Drawing, shift: float) -> bool:
    """The sample's shape hue is nearer the shifted hue than the captioned one (no shape: False)."""
    if read.hue is None:
        return False
    return hue_distance(read.hue, asked.hue + shift) < hue_distance(read.hue, asked.hue)


def signed_hue_move(read: Reading, asked: Drawing) -> float | None:
    """How far the sample's hue is from the captioned one, in degrees, positive in the shift's direction."""
    if read.hue is None:
        return None
    return (read.hue - asked.hue + 180.0) % 360.0 - 180.0

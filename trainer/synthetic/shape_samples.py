"""Generate images of the shapes domain from a pipeline and judge them with the exact classifier.

Used to show that a model draws what its caption says (after pre-training) and how far a preference job
moved it (the share of samples in a target colour, the hue it reached).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from trainer.lora import inference_mode
from trainer.sampling import Renderer
from trainer.synthetic.shapes import BACKGROUNDS, COLOURS, KINDS, Drawing, Reading, caption, classify

ATTRIBUTES = ("kind", "colour", "background")
SAMPLE_STEPS = 20
SAMPLE_GUIDANCE = 4.0
BATCH = 32


@dataclass(frozen=True)
class Judged:
    """One generated image, what it was asked to show, and what the classifier read in it."""

    prompt: str
    asked: Drawing
    read: Reading
    image: Image.Image


def every_caption_drawing() -> list[Drawing]:
    """One drawing per (kind, colour, background): the 27 full captions of the domain."""
    return [
        Drawing(kind=kind, hue=hue, background=background)
        for kind in KINDS
        for hue in COLOURS.values()
        for background in BACKGROUNDS
    ]


@torch.no_grad()
def generate(
    renderer: Renderer,
    prompts: Sequence[str],
    *,
    seed: int,
    resolution: int,
    steps: int = SAMPLE_STEPS,
    guidance: float = SAMPLE_GUIDANCE,
) -> list[Image.Image]:
    """One image per prompt; prompt i uses the generator seeded `seed + i`, whatever the batching."""
    images: list[Image.Image] = []
    with inference_mode(renderer.denoiser):
        for start in range(0, len(prompts), BATCH):
            chunk = list(prompts[start : start + BATCH])
            images += renderer.images(
                chunk,
                seeds=[seed + start + i for i in range(len(chunk))],
                resolution=resolution,
                num_inference_steps=steps,
                guidance_scale=guidance,
            )
    return images


def judge(
    renderer: Renderer,
    drawings: Sequence[Drawing],
    *,
    seed: int,
    resolution: int,
    with_colour: bool = True,
    guidance: float = SAMPLE_GUIDANCE,
) -> list[Judged]:
    """Generate each drawing's caption and classify the result."""
    prompts = [caption(d, with_colour=with_colour) for d in drawings]
    images = generate(renderer, prompts, seed=seed, resolution=resolution, guidance=guidance)
    return [
        Judged(prompt, drawing, classify(image), image)
        for prompt, drawing, image in zip(prompts, drawings, images, strict=True)
    ]


def caption_accuracy(judged: Sequence[Judged]) -> dict[str, float]:
    """Share of samples whose kind, colour and background match the caption, and all three at once."""
    hits = {name: 0 for name in (*ATTRIBUTES, "all")}
    for item in judged:
        right = {
            "kind": item.read.kind == item.asked.kind,
            "colour": item.read.colour == item.asked.colour,
            "background": item.read.background == item.asked.background,
        }
        for name, ok in right.items():
            hits[name] += ok
        hits["all"] += all(right.values())
    return {name: count / len(judged) for name, count in hits.items()}


def contact_sheet(images: Sequence[Image.Image], *, columns: int) -> Image.Image:
    """The images in a grid, row by row, for the docs and for looking."""
    width, height = images[0].size
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * width, rows * height), (255, 255, 255))
    for index, image in enumerate(images):
        sheet.paste(image, ((index % columns) * width, (index // columns) * height))
    return sheet

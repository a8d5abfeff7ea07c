"""The base model draws a targets row's rejected image from the row's drawing prompt, not its training
prompt: a trigger word trains against what the base model draws without it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from tests.support.specs import tiny_spec
from trainer.completion import complete_dataset, pair_seed
from trainer.dataset_format import DatasetWriter, EncodedImage, read_pairs
from trainer.synthetic.demo_data import demo_pairs

NAMESPACE = "ds_prompts"
# (prompt trained on, prompt the base model draws from): a trigger word inserted, and a caption that was
# only the trigger word (drawn from no prompt at all).
ROWS = [("a photo of sks circle", "a photo of circle"), ("sks", "")]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def base_model_draws(base_model: Path, prompts: list[str]) -> list[np.ndarray]:
    """What a plain diffusers pipeline of the base model draws for each row's prompt from its seed."""
    pipeline = DiffusionPipeline.from_pretrained(str(base_model))
    pipeline.set_progress_bar_config(disable=True)
    pipeline = pipeline.to("cuda" if torch.cuda.is_available() else "cpu")
    images = []
    for index, prompt in enumerate(prompts):
        image = pipeline(
            prompt,
            num_inference_steps=2,
            guidance_scale=5.0,
            height=32,
            width=32,
            generator=torch.Generator("cpu").manual_seed(pair_seed(NAMESPACE, index)),
        ).images[0]
        images.append(np.asarray(image, dtype=np.int16))
    return images


def test_rejected_images_are_drawn_from_the_drawing_prompt(tiny_sd: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "ds"
    uploads = list(demo_pairs(num_pairs=len(ROWS), resolution=32, seed=5))
    with DatasetWriter(dataset, kind="targets") as writer:
        for (prompt, drawn_from), upload in zip(ROWS, uploads, strict=True):
            writer.add_target(prompt, image=EncodedImage(upload.chosen, ".png"), generation_prompt=drawn_from)
    spec = tiny_spec(tiny_sd, generation={"num_inference_steps": 2})

    pairs_dir = complete_dataset(dataset, spec, seed_namespace=NAMESPACE, on_event=lambda _: None)

    assert pairs_dir is not None
    pairs = read_pairs(pairs_dir)
    assert [p.prompt for p in pairs] == [prompt for prompt, _ in ROWS]  # trained with the trigger word
    expected = base_model_draws(tiny_sd, [drawn_from for _, drawn_from in ROWS])
    with_trigger = base_model_draws(tiny_sd, [prompt for prompt, _ in ROWS])
    for pair, drawn, wrong in zip(pairs, expected, with_trigger, strict=True):
        rejected = pixels(pairs_dir / pair.rejected)
        assert np.abs(rejected - drawn).max() <= 1
        assert np.abs(rejected - wrong).max() > 1  # the test could tell the two prompts apart

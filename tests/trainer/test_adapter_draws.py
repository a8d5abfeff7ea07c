"""What a user does with a finished adapter: load it into the family's own diffusers pipeline with
nothing but `from_pretrained`, `load_lora_weights` and a default call, and get the images that training's
validation drew, for every family."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from tests.support.specs import tiny_spec
from trainer.events import Event, Sample, SampleImage
from trainer.loop import train

PROMPT = "a red circle on a white background"
GUIDANCE, STEPS, SEED = 3.0, 2, 7


def _validation_images(events: list[Event], *, with_lora: bool) -> list[SampleImage]:
    samples = [image for e in events if isinstance(e, Sample) for image in e.images]
    return [image for image in samples if image.with_lora == with_lora]


def _default_call(pipeline: DiffusionPipeline) -> np.ndarray:
    """The pipeline's own defaults for everything but what the validation spec sets."""
    image = pipeline(
        prompt=PROMPT,
        height=32,
        width=32,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        generator=torch.Generator("cpu").manual_seed(SEED),
    ).images[0]
    return np.asarray(image, np.int16)


def _png(image: SampleImage) -> np.ndarray:
    return np.asarray(Image.open(image.path).convert("RGB"), np.int16)


def test_the_adapter_in_a_default_pipeline_call_draws_what_training_drew(
    tiny_model: Path, color_pairs: Path, tmp_path: Path
) -> None:
    validation = {"prompts": [PROMPT], "num_inference_steps": STEPS, "guidance_scale": GUIDANCE, "seed": SEED}
    spec = tiny_spec(tiny_model, lora_rank=4, lora_alpha=8.0, learning_rate=1e-2, validation=validation)
    events: list[Event] = []
    result = train(spec, color_pairs, tmp_path, on_event=events.append)

    pipeline = DiffusionPipeline.from_pretrained(str(tiny_model))
    base = _default_call(pipeline)
    (trained,) = _validation_images(events, with_lora=True)[-1:]
    (untrained,) = _validation_images(events, with_lora=False)
    assert np.abs(_png(untrained) - base).max() <= 1, "the base model's validation image is a default call"

    assert result.adapter_path is not None
    pipeline.load_lora_weights(str(result.adapter_path.parent), weight_name=result.adapter_path.name)
    adapted = _default_call(pipeline)
    assert np.abs(adapted - base).max() > 2, "the adapter must change the image for this to test anything"
    assert np.abs(_png(trained) - adapted).max() <= 1

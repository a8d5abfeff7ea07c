"""The shipped pre-trained models load like any base model and draw what their captions say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainer.base_models import SHIPPED, shipped_base_models
from trainer.models import load_model
from trainer.pretrain import REPORT_FILE
from trainer.sampling import build_pipeline
from trainer.shape_samples import caption_accuracy, every_caption_drawing, judge


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_model_draws_the_captioned_colour_shape_and_background(name: str) -> None:
    path = shipped_base_models()[name]
    model = load_model(path, device=torch.device("cpu"), weight_dtype=torch.float32)
    assert model.family == SHIPPED[name] and model.unet.dtype == torch.float32

    judged = judge(build_pipeline(model, model.unet), every_caption_drawing(), seed=0, resolution=64)
    accuracy = caption_accuracy(judged)

    # A random tiny model scores a third on each (chance among three); see docs/experiments.md.
    assert accuracy["colour"] >= 0.9 and accuracy["background"] >= 0.6 and accuracy["kind"] >= 0.6
    report = json.loads((Path(path) / REPORT_FILE).read_text())
    assert report["family"] == SHIPPED[name] and report["config"]["denoiser_steps"] > 0

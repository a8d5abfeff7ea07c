"""The shipped pre-trained models load like any base model, draw what their captions say, and learn a
preference a random model cannot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline

from tests.support.specs import tiny_spec
from trainer.events import Evaluation, Event
from trainer.families.registry import load_family
from trainer.loop import train
from trainer.sampling import Renderer
from trainer.synthetic.base_models import SHIPPED, shipped_base_models
from trainer.synthetic.pretrain import REPORT_FILE
from trainer.synthetic.shape_preferences import prefer_red_pairs, write_dataset
from trainer.synthetic.shape_samples import caption_accuracy, every_caption_drawing, judge
from trainer.synthetic.shapes import caption, classify


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_model_draws_the_captioned_colour_shape_and_background(name: str) -> None:
    path = shipped_base_models()[name]
    model = load_family(path, device=torch.device("cpu"), weight_dtype=torch.float32)
    assert model.name == SHIPPED[name] and model.denoiser.dtype == torch.float32

    judged = judge(Renderer.build(model, model.denoiser), every_caption_drawing(), seed=0, resolution=64)
    accuracy = caption_accuracy(judged)

    # A random tiny model scores a third on each (chance among three); see docs/experiments.md.
    assert accuracy["colour"] >= 0.9 and accuracy["background"] >= 0.6 and accuracy["kind"] >= 0.6
    report = json.loads((Path(path) / REPORT_FILE).read_text())
    assert report["family"] == SHIPPED[name] and report["config"]["denoiser_steps"] > 0


def _red_share(base: str, adapter: Path | None) -> float:
    """The share of red shapes a plain default pipeline call draws for the colour-less captions: nothing
    but from_pretrained, load_lora_weights and the pipeline's own defaults (steps, guidance, length)."""
    pipeline = DiffusionPipeline.from_pretrained(base, torch_dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    if adapter is not None:
        pipeline.load_lora_weights(str(adapter.parent), weight_name=adapter.name)
    drawings = every_caption_drawing()[::3]  # each kind on each background once
    prompts = [caption(d, with_colour=False) for d in drawings]
    images = pipeline(
        prompt=prompts,
        height=64,
        width=64,
        generator=[torch.Generator("cpu").manual_seed(i) for i in range(len(prompts))],
    ).images
    return sum(classify(image).colour == "red" for image in images) / len(images)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_mapo_job_on_a_shipped_base_turns_its_default_pipeline_red(name: str, tmp_path: Path) -> None:
    """The prefer-red demo as a user runs it: held-out accuracy rises, and the adapter in a plain
    pipeline call moves the colour-less prompts' shapes to red as far as that accuracy says."""
    base = shipped_base_models()[name]
    write_dataset(tmp_path / "red", prefer_red_pairs(num_pairs=48, seed=0), resolution=64)
    spec = tiny_spec(
        Path(base),
        resolution=64,
        train_batch_size=4,
        max_train_steps=100,
        checkpoint_every_n_steps=1000,
        lora_rank=8,
        cache_latents=True,
        eval_fraction=0.25,
    )
    events: list[Event] = []
    result = train(spec, tmp_path / "red", tmp_path / "out", on_event=events.append)

    before, after = (e.metrics["heldout_accuracy"] for e in events if isinstance(e, Evaluation))
    assert before < 0.6 and after >= 0.9
    assert result.adapter_path is not None
    red_before, red_after = _red_share(base, None), _red_share(base, result.adapter_path)
    assert red_after >= 0.75 and red_after >= red_before + 0.3, (red_before, red_after)

"""MaPO learns the preference it is shown, measured on pairs it never trained on."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer.specs import tiny_spec
from trainer.demo_data import make_demo_dataset
from trainer.events import Evaluation, Event
from trainer.loop import train
from trainer.tiny import build_tiny_pipeline


@pytest.mark.slow
def test_mapo_widens_the_held_out_error_gap_on_the_demo_preference(tmp_path: Path) -> None:
    # The "small" SDXL-shaped model: the tiny one has too little attention capacity to learn this at all.
    base = build_tiny_pipeline("sdxl", tmp_path / "small-sdxl", preset="small")
    make_demo_dataset(tmp_path / "demo", num_pairs=48, resolution=64)
    spec = tiny_spec(
        base,
        resolution=64,
        train_batch_size=4,
        max_train_steps=150,
        checkpoint_every_n_steps=1000,
        lora_rank=8,
        cache_latents=True,
        eval_fraction=0.25,
        eval_every_n_steps=75,
    )
    events: list[Event] = []
    train(spec, tmp_path / "demo", tmp_path / "out", on_event=events.append)
    evaluations = [e.metrics for e in events if isinstance(e, Evaluation)]
    before, after = evaluations[0], evaluations[-1]
    assert after["heldout_error_gap"] > 2 * before["heldout_error_gap"] > 0
    assert after["heldout_accuracy"] >= before["heldout_accuracy"] + 0.05

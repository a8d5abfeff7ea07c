"""Training specs that run in about a second on the tiny models: the fields (trainer, worker, e2e and
scale tests), a job's spec on the tiny-sd base model (worker tests) and a TrainSpec (trainer tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.spec import TrainSpec

# Training fields that make a run take about a second on the tiny models (trainer, worker and e2e tests).
FAST_TRAINING: dict[str, Any] = {
    "resolution": 32,
    "train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "max_train_steps": 4,
    "learning_rate": 1e-3,
    "checkpoint_every_n_steps": 2,
    "mixed_precision": "no",
}


def tiny_spec(base_model: Path, **overrides: object) -> TrainSpec:
    """A spec that trains in about a second on the tiny models."""
    return TrainSpec.model_validate({"base_model": str(base_model), **FAST_TRAINING, **overrides})


# A job's spec on the workers' tiny-sd base model, validating on one prompt.
FAST_SPEC: dict[str, Any] = {
    "base_model": "tiny-sd",
    "method": "mapo",
    **FAST_TRAINING,
    "validation": {"prompts": ["a circle"], "num_inference_steps": 2},
}

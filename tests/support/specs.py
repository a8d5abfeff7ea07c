"""Spec builders for the trainer tests."""

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

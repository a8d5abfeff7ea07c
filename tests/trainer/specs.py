"""Spec builders for the trainer tests."""

from __future__ import annotations

from pathlib import Path

from trainer.spec import TrainSpec


def tiny_spec(base_model: Path, **overrides: object) -> TrainSpec:
    """A spec that trains in about a second on the tiny models."""
    fields: dict[str, object] = {
        "base_model": str(base_model),
        "resolution": 32,
        "train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_train_steps": 4,
        "learning_rate": 1e-3,
        "checkpoint_every_n_steps": 2,
        "mixed_precision": "no",
    }
    fields.update(overrides)
    return TrainSpec.model_validate(fields)

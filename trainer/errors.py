"""Typed training failures. Each carries a stable `code` that the service stores as the job's error."""

from __future__ import annotations


class TrainingError(Exception):
    """Base class: training cannot go on. `code` is stable and machine-readable."""

    code = "training_failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelLoadError(TrainingError):
    code = "model_load_failed"


class InvalidDatasetError(TrainingError):
    code = "invalid_dataset"


class NonFiniteLossError(TrainingError):
    code = "non_finite_loss"


class CheckpointError(TrainingError):
    code = "checkpoint_failed"


class GenerationError(TrainingError):
    """The base model could not draw the missing images of a targets or avoid dataset."""

    code = "generation_failed"


class WorldSizeError(TrainingError):
    """The run has a different number of processes than the spec's `gpus` asks for."""

    code = "world_size_mismatch"


class SpecMismatchError(TrainingError):
    """The spec sets a field that the base model's family does not take (the API could not tell)."""

    code = "invalid_spec"


class PrecisionUnavailableError(TrainingError):
    """The spec asks for a base or text-encoder precision this worker's device cannot run (fp8 needs
    a CUDA GPU of compute capability 8.9 or more)."""

    code = "precision_unavailable"

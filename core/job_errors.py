"""Every code a failed job's `error.code` can carry, with what it means: the one catalogue the worker
writes from and the OpenAPI document lists.

The trainer's typed errors (trainer/errors.py, trainer/launch.py) carry their codes as plain strings,
since the trainer imports nothing of the service; tests/core/test_lifecycle.py checks that each of them is
listed here.
"""

from __future__ import annotations

from enum import StrEnum


class JobErrorCode(StrEnum):
    """Why a job failed (the value is the stored and shown code)."""

    # Set up by the worker before training starts.
    UNKNOWN_BASE_MODEL = "unknown_base_model"
    DATASET_MISSING = "dataset_missing"
    INVALID_SPEC = "invalid_spec"
    # Raised by the trainer.
    TRAINING_FAILED = "training_failed"
    MODEL_LOAD_FAILED = "model_load_failed"
    INVALID_DATASET = "invalid_dataset"
    NON_FINITE_LOSS = "non_finite_loss"
    CHECKPOINT_FAILED = "checkpoint_failed"
    GENERATION_FAILED = "generation_failed"
    WORLD_SIZE_MISMATCH = "world_size_mismatch"
    RANK_FAILED = "rank_failed"
    PRECISION_UNAVAILABLE = "precision_unavailable"
    OUT_OF_MEMORY = "out_of_memory"
    # The worker itself.
    NOT_ENOUGH_GPUS = "not_enough_gpus"
    OUTPUTS_NOT_STORED = "outputs_not_stored"
    WORKER_LOST_REPEATEDLY = "worker_lost_repeatedly"
    INTERNAL_ERROR = "internal_error"


JOB_ERROR_MEANINGS: dict[JobErrorCode, str] = {
    JobErrorCode.UNKNOWN_BASE_MODEL: "the job's base model is no longer configured on the worker",
    JobErrorCode.DATASET_MISSING: "the job's dataset was deleted before it ran",
    JobErrorCode.INVALID_SPEC: "the stored request no longer validates, or sets a field the base "
    "model's family does not take",
    JobErrorCode.TRAINING_FAILED: "training could not go on (a typed trainer error without a code "
    "of its own)",
    JobErrorCode.MODEL_LOAD_FAILED: "the base model could not be loaded",
    JobErrorCode.INVALID_DATASET: "the dataset's files could not be read as preference pairs",
    JobErrorCode.NON_FINITE_LOSS: "the loss became NaN or infinite",
    JobErrorCode.CHECKPOINT_FAILED: "a checkpoint could not be written or restored",
    JobErrorCode.GENERATION_FAILED: "the base model could not draw the missing images of a targets or "
    "avoid dataset",
    JobErrorCode.WORLD_SIZE_MISMATCH: "the run had a different number of processes than `gpus` asks for",
    JobErrorCode.RANK_FAILED: "a training process of a multi-GPU run died without a typed error "
    "(a crash, a kill, out of memory)",
    JobErrorCode.PRECISION_UNAVAILABLE: "the job's base_precision or text_encoder_precision cannot run "
    "on the device of the worker that took it (fp8 needs a CUDA GPU of compute capability 8.9 or more)",
    JobErrorCode.OUT_OF_MEMORY: "the job ran out of memory: CUDA out of memory on its GPU, or the host "
    "refusing a tensor; the message says how much was asked for (a smaller train_batch_size, resolution "
    "or base_precision needs less)",
    JobErrorCode.NOT_ENOUGH_GPUS: "the job asks for more GPUs (`gpus`) than the worker that took it has",
    JobErrorCode.OUTPUTS_NOT_STORED: "training ended but its last outputs (the adapter among them) "
    "could not be stored or recorded",
    JobErrorCode.WORKER_LOST_REPEATEDLY: "the job's training process died every time it ran (killed, out "
    "of memory, a crash, its worker lost) as many times as `MAPO_MAX_WORKER_LOSSES` allows; the message "
    "names the last cause seen",
    JobErrorCode.INTERNAL_ERROR: "an unexpected error in the worker; the message names it",
}


def error_code(code: str) -> JobErrorCode:
    """The catalogued code for `code` (a trainer error's string); `internal_error` for one the catalogue
    lacks, so a job never ends with a code the API does not document."""
    try:
        return JobErrorCode(code)
    except ValueError:
        return JobErrorCode.INTERNAL_ERROR


def describe_codes() -> str:
    """The catalogue as a Markdown list, for the OpenAPI description of `error.code`."""
    return "\n".join(f"- `{code.value}`: {meaning}" for code, meaning in JOB_ERROR_MEANINGS.items())

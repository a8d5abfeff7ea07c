"""How many devices this worker can give one job, and the check that a job fits.

The count is `MAPO_WORKER_GPUS` when set, else the CUDA devices this process sees (1 without CUDA).
A job whose spec asks for more fails with `not_enough_gpus` before anything loads. (Routing such a job
only to a worker that can serve it belongs to the queue; this is the worker's own last line.)
"""

from __future__ import annotations

from core.job_errors import JobErrorCode
from core.settings import Settings
from trainer.errors import TrainingError
from trainer.spec import TrainSpec


class NotEnoughGpusError(TrainingError):
    code = JobErrorCode.NOT_ENOUGH_GPUS.value


def available_gpus(settings: Settings) -> int:
    if settings.worker_gpus is not None:
        return settings.worker_gpus
    import torch  # here, not at import: the count is only needed once a job runs

    return max(torch.cuda.device_count(), 1)


def check_fits(spec: TrainSpec, available: int) -> None:
    """Raise `NotEnoughGpusError` if `spec` asks for more devices than `available`."""
    if spec.gpus > available:
        raise NotEnoughGpusError(
            f"the job asks for gpus={spec.gpus} but this worker has {available} "
            f"(MAPO_WORKER_GPUS or its CUDA devices)"
        )

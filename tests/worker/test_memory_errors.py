"""A job that ran out of memory fails as out_of_memory, whoever raised it and however it was wrapped:
the errors here are torch's own, raised by asking its allocators for more than any host has."""

from __future__ import annotations

import pytest
import torch

from core.job_errors import JobErrorCode, error_code
from trainer.errors import CheckpointError
from worker.memory_errors import out_of_memory

PETABYTE = 2**50


def _raised(device: str) -> RuntimeError:
    try:
        torch.empty(PETABYTE, dtype=torch.uint8, device=device)
    except RuntimeError as exc:
        return exc
    raise AssertionError("a petabyte was allocated")


def test_the_host_allocator_refusing_a_tensor_is_out_of_host_memory() -> None:
    refused = _raised("cpu")
    assert (out_of_memory(refused) or "").startswith("out of host memory: ")
    try:
        raise CheckpointError("saving the checkpoint of step 3 failed") from refused
    except CheckpointError as wrapped:
        assert (out_of_memory(wrapped) or "").startswith("out of host memory: ")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_out_of_memory_is_out_of_gpu_memory() -> None:
    refused = _raised("cuda")
    assert isinstance(refused, torch.OutOfMemoryError)
    assert (out_of_memory(refused) or "").startswith("out of GPU memory: CUDA out of memory")


def test_a_rank_that_died_of_cuda_oom_is_out_of_gpu_memory_and_other_errors_are_not() -> None:
    from trainer.launch import RankFailedError

    stderr = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB"
    assert out_of_memory(RankFailedError(f"rank 1 exited with code 1; stderr: {stderr}")) is not None
    assert out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert error_code("out_of_memory") == JobErrorCode.OUT_OF_MEMORY

"""Model helpers that run inside the training step."""

from __future__ import annotations

import torch

from trainer.families.base import ImageGeometry
from trainer.families.sdxl import sdxl_time_ids


def test_sdxl_time_ids_are_original_size_crop_and_target() -> None:
    ids = sdxl_time_ids(ImageGeometry(torch.tensor([[512, 640]]), torch.tensor([[3, 7]]), 256))
    assert ids.tolist() == [[512, 640, 3, 7, 256, 256]]


def test_sdxl_time_ids_stay_on_the_batch_device() -> None:
    # A GPU run once failed here: the target size was made on the CPU while the batch was on cuda:0. The
    # meta device stands in for any non-CPU device, since mixing it with CPU tensors fails the same way.
    sizes = torch.zeros(2, 2, dtype=torch.long, device="meta")
    ids = sdxl_time_ids(ImageGeometry(sizes, torch.zeros(2, 2, dtype=torch.long, device="meta"), 1024))
    assert ids.device.type == "meta" and ids.shape == (2, 6)

"""Preference masks: where in an image a pair's preference applies (1) and where it does not (0).

A mask is stored at pixel resolution; the loss sees it on the latent grid, area-averaged, so a latent cell
half covered by the mask weighs one half. The per-sample error is then the mask-weighted mean of the
squared error over channels and cells instead of the plain mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def latent_grid_mask(pixel_mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 1, H, W) weights in [0, 1] -> (N, 1, h, w) by area averaging, float32."""
    return F.adaptive_avg_pool2d(pixel_mask.float(), size)


def masked_mean_error(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-sample mean squared error, float32, shape (N,), of (N, C, h, w) predictions.

    mask: None (the plain mean, exactly as without masks) or (N, 1, h, w) weights on the latent grid. A
    sample whose weights are all zero (its white area cropped away) falls back to the plain mean rather
    than dividing by zero; ingest refuses masks that are black everywhere.
    """
    squared = (pred.float() - target.float()).pow(2)
    dims = tuple(range(1, squared.ndim))
    if mask is None:
        return squared.mean(dim=dims)
    weights = mask.float().expand_as(squared)
    # No `if empty.any()`: on an accelerator that would wait for the device every step.
    empty = (weights.sum(dim=dims) == 0).view(-1, *([1] * (squared.ndim - 1)))
    weights = torch.where(empty, torch.ones_like(weights), weights)
    return (squared * weights).sum(dim=dims) / weights.sum(dim=dims)

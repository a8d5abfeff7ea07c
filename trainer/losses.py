"""Preference losses on per-sample denoising errors. Pure functions: tensors and scalars in, a result out.

All take 1-D tensors of length B (one entry per pair): `chosen_err[i]` and `rejected_err[i]` are the mean
squared denoising errors of the preferred and the dispreferred image of pair i, computed with the same
timestep, noise and text conditioning. Every returned field is a scalar tensor; `loss` carries gradients,
the rest are detached and meant for logging.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class MapoResult(NamedTuple):
    loss: torch.Tensor
    chosen_loss: torch.Tensor
    rejected_loss: torch.Tensor
    chosen_score: torch.Tensor
    rejected_score: torch.Tensor
    margin: torch.Tensor
    preference_term: torch.Tensor
    accuracy: torch.Tensor


class DpoResult(NamedTuple):
    loss: torch.Tensor
    chosen_loss: torch.Tensor
    rejected_loss: torch.Tensor
    ref_chosen_loss: torch.Tensor
    ref_rejected_loss: torch.Tensor
    implicit_reward_margin: torch.Tensor
    accuracy: torch.Tensor


class SftResult(NamedTuple):
    loss: torch.Tensor
    chosen_loss: torch.Tensor


def bounded_score(x: torch.Tensor) -> torch.Tensor:
    """s(x) = x / (exp(x) - 1), with s(0) = 1; falls from 1 toward 0 as x >= 0 grows.

    `expm1` keeps precision for small x; near 0 the second-order Taylor series 1 - x/2 + x^2/12 is used
    instead, because x / expm1(x) is 0/0 at x = 0 (the reference's `exp(x) - 1` also loses digits there).
    """
    small = x.abs() < 1e-4
    safe_x = torch.where(small, torch.ones_like(x), x)
    exact = safe_x / torch.expm1(safe_x)
    series = 1.0 - x / 2.0 + x * x / 12.0
    return torch.where(small, series, exact)


def mapo_loss(
    chosen_err: torch.Tensor,
    rejected_err: torch.Tensor,
    *,
    beta: float = 0.1,
    gamma: float = 0.5,
    num_train_timesteps: float = 1000.0,
) -> MapoResult:
    """Margin-aware preference loss (MaPO): denoising on the chosen images plus a reference-free margin.

    Args:
        chosen_err, rejected_err: shape (B,), per-pair mean squared errors m_w and m_l (float32 or 64).
        beta: weight of the preference term.
        gamma: scale of the errors inside the bounded score.
        num_train_timesteps: T, the margin scale that sharpens the log-sigmoid (the UNet families use
            the scheduler's training timesteps, 1000; the flow families their own, see the spec).

    Returns:
        loss = mean(m_w) - beta * mean(logsigmoid(T * (s(gamma m_w) - s(gamma m_l)))), and its terms;
        accuracy is the fraction of pairs with m_w < m_l (strictly).
    """
    _check_same_shape(chosen_err, rejected_err)
    chosen_score = bounded_score(gamma * chosen_err)
    rejected_score = bounded_score(gamma * rejected_err)
    margin = chosen_score - rejected_score
    ratio = F.logsigmoid(num_train_timesteps * margin)
    chosen_loss = chosen_err.mean()
    preference_term = -beta * ratio.mean()
    return MapoResult(
        loss=chosen_loss + preference_term,
        chosen_loss=chosen_loss.detach(),
        rejected_loss=rejected_err.mean().detach(),
        chosen_score=chosen_score.mean().detach(),
        rejected_score=rejected_score.mean().detach(),
        margin=margin.mean().detach(),
        preference_term=preference_term.detach(),
        accuracy=_pair_accuracy(rejected_err - chosen_err, tie_value=0.0),
    )


def dpo_loss(
    chosen_err: torch.Tensor,
    rejected_err: torch.Tensor,
    ref_chosen_err: torch.Tensor,
    ref_rejected_err: torch.Tensor,
    *,
    beta: float = 5000.0,
) -> DpoResult:
    """Diffusion-DPO (Wallace et al. 2023), as in diffusers' SDXL script (with the 0.5 factor).

    Args:
        chosen_err, rejected_err: shape (B,), errors of the trained model.
        ref_chosen_err, ref_rejected_err: shape (B,), errors of the frozen reference on the same inputs.
        beta: KL strength (5000 for SDXL; the SD 1.5 script's 2500 without the 0.5 is the same objective).

    Returns:
        loss = -mean(logsigmoid(-0.5 beta ((m_w - m_l) - (r_w - r_l)))); accuracy counts ties as half.
    """
    _check_same_shape(chosen_err, rejected_err)
    _check_same_shape(ref_chosen_err, ref_rejected_err)
    model_diff = chosen_err - rejected_err
    ref_diff = ref_chosen_err.detach() - ref_rejected_err.detach()
    inside = -0.5 * beta * (model_diff - ref_diff)
    return DpoResult(
        loss=-F.logsigmoid(inside).mean(),
        chosen_loss=chosen_err.mean().detach(),
        rejected_loss=rejected_err.mean().detach(),
        ref_chosen_loss=ref_chosen_err.mean().detach(),
        ref_rejected_loss=ref_rejected_err.mean().detach(),
        implicit_reward_margin=inside.mean().detach(),
        accuracy=_pair_accuracy(inside, tie_value=0.5),
    )


def sft_loss(chosen_err: torch.Tensor) -> SftResult:
    """Supervised fine-tuning on the chosen images only: loss = mean(m_w). Shape (B,) in."""
    chosen_loss = chosen_err.mean()
    return SftResult(loss=chosen_loss, chosen_loss=chosen_loss.detach())


def _pair_accuracy(advantage: torch.Tensor, *, tie_value: float) -> torch.Tensor:
    """Fraction of pairs where `advantage` > 0, a tie counting `tie_value`."""
    wins = (advantage > 0).to(torch.float64) + tie_value * (advantage == 0).to(torch.float64)
    return wins.mean().to(advantage.dtype).detach()


def _check_same_shape(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"expected two 1-D tensors of the same length, got {tuple(a.shape)} and {tuple(b.shape)}"
        )

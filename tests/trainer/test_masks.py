"""Preference masks in the loss: the masked mean of the per-sample error, on known tensors and through
every family's error path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer import losses
from trainer.families.base import ImageGeometry
from trainer.families.registry import load_family
from trainer.lora import attach_lora
from trainer.masks import latent_grid_mask, masked_mean_error
from trainer.objective import PairInputs, denoising_errors, folded_errors

CPU = torch.device("cpu")


def _left_half(n: int, h: int, w: int) -> torch.Tensor:
    mask = torch.zeros(n, 1, h, w)
    mask[..., : w // 2] = 1.0
    return mask


def _pred_target(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 8, 8, generator=generator), torch.randn(4, 3, 8, 8, generator=generator)


def test_no_mask_is_today_s_plain_mean_exactly() -> None:
    pred, target = _pred_target()
    today = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
    assert torch.equal(masked_mean_error(pred, target, None), today)


def test_a_mask_of_ones_equals_the_unmasked_error() -> None:
    pred, target = _pred_target()
    ones = torch.ones(4, 1, 8, 8)
    torch.testing.assert_close(
        masked_mean_error(pred, target, ones), masked_mean_error(pred, target, None), rtol=0, atol=1e-7
    )


def test_a_half_mask_ignores_the_other_half() -> None:
    pred, target = _pred_target()
    mask = _left_half(4, 8, 8)
    changed_pred, changed_target = pred.clone(), target.clone()
    changed_pred[..., 4:] += 5.0
    changed_target[..., 4:] -= 3.0
    assert torch.equal(
        masked_mean_error(pred, target, mask), masked_mean_error(changed_pred, changed_target, mask)
    )
    # ...and is the plain mean over the half it covers.
    left = (pred[..., :4] - target[..., :4]).pow(2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(masked_mean_error(pred, target, mask), left, rtol=1e-6, atol=0)
    assert not torch.equal(
        masked_mean_error(pred, target, None), masked_mean_error(changed_pred, changed_target, None)
    )


def test_an_all_zero_mask_falls_back_to_the_plain_mean() -> None:
    pred, target = _pred_target()
    mask = _left_half(4, 8, 8)
    mask[1] = 0.0
    errors = masked_mean_error(pred, target, mask)
    assert torch.isfinite(errors).all()
    torch.testing.assert_close(errors[1], masked_mean_error(pred, target, None)[1], rtol=1e-6, atol=0)


def test_pixel_masks_are_area_averaged_onto_the_latent_grid() -> None:
    pixels = torch.zeros(1, 1, 16, 16)
    pixels[..., :, :6] = 1.0  # 6 of 16 columns: the second latent column of four is half covered
    grid = latent_grid_mask(pixels, (4, 4))
    assert grid.shape == (1, 1, 4, 4)
    assert grid[0, 0, 0].tolist() == [1.0, 0.5, 0.0, 0.0]


@pytest.mark.parametrize("method", ["mapo", "dpo", "sft"])
def test_every_method_s_loss_ignores_what_the_mask_leaves_out(method: str) -> None:
    def loss(mask: torch.Tensor | None, shift: float) -> torch.Tensor:
        pred, target = _pred_target()
        pred[..., 4:] += shift
        chosen, rejected = masked_mean_error(pred, target, mask).chunk(2)
        ref_pred, ref_target = _pred_target(seed=1)
        ref_chosen, ref_rejected = masked_mean_error(ref_pred, ref_target, mask).chunk(2)
        if method == "mapo":
            return losses.mapo_loss(chosen, rejected, beta=0.1, gamma=1.0, num_train_timesteps=1000).loss
        if method == "dpo":
            return losses.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=500.0).loss
        return losses.sft_loss(chosen).loss

    half = _left_half(4, 8, 8)
    assert torch.equal(loss(half, 0.0), loss(half, 3.0))
    assert not torch.equal(loss(None, 0.0), loss(None, 3.0))
    torch.testing.assert_close(loss(torch.ones(4, 1, 8, 8), 0.0), loss(None, 0.0), rtol=1e-6, atol=0)


def test_every_family_s_error_path_takes_the_mask(tiny_model: Path) -> None:
    loaded = load_family(str(tiny_model), device=CPU, weight_dtype=torch.float32)
    generator = torch.Generator().manual_seed(3)
    side = 32 // loaded.vae_scale_factor
    latents = torch.randn(4, loaded.latent_channels, side, side, generator=generator)
    conditioning = loaded.encode_prompts(["a", "b"])
    noise = torch.randn(2, *latents.shape[1:], generator=generator)
    levels = loaded.draw_levels(2, latents=latents)

    def errors(mask: torch.Tensor | None) -> torch.Tensor:
        inputs = PairInputs(latents, conditioning, ImageGeometry.uncropped(2, 32), mask)
        with torch.no_grad():
            return denoising_errors(loaded.denoiser, loaded, inputs, noise=noise, levels=levels)

    plain = errors(None)
    torch.testing.assert_close(errors(torch.ones(4, 1, side, side)), plain, rtol=1e-6, atol=0)
    left = _left_half(4, side, side)
    # Two halves of equal area average to the whole: the mask lands on the cells it names, also where
    # FLUX packs 2x2 cells into tokens.
    torch.testing.assert_close((errors(left) + errors(1.0 - left)) / 2, plain, rtol=1e-5, atol=0)
    assert not torch.allclose(errors(left), plain)


def test_dpo_s_folded_reference_takes_each_pair_s_mask(tiny_sd: Path) -> None:
    loaded = load_family(str(tiny_sd), device=CPU, weight_dtype=torch.float32)
    attach_lora(loaded.denoiser, rank=4, alpha=4.0, dropout=0.0, targets=list(loaded.default_lora_targets))
    generator = torch.Generator().manual_seed(5)
    side = 32 // loaded.vae_scale_factor
    latents = torch.randn(4, loaded.latent_channels, side, side, generator=generator)
    # A different mask per pair, so a mask paired with the wrong image would show.
    masks = torch.cat([_left_half(1, side, side), 1.0 - _left_half(1, side, side)]).repeat(2, 1, 1, 1)
    inputs = PairInputs(latents, loaded.encode_prompts(["a", "b"]), ImageGeometry.uncropped(2, 32), masks)
    noise = torch.randn(2, *latents.shape[1:], generator=generator)
    levels = loaded.draw_levels(2, latents=latents)
    policy, reference = folded_errors(loaded.denoiser, loaded, inputs, noise=noise, levels=levels)
    with torch.no_grad():
        separate = denoising_errors(loaded.denoiser, loaded, inputs, noise=noise, levels=levels)
    torch.testing.assert_close(policy.detach(), separate, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(reference, separate, rtol=1e-4, atol=1e-6)  # a zero LoRA is the base

"""How the flow-matching families make their errors: noise levels, noising, weighting, packing.

The formulas are checked on known tensors and against what diffusers' own SD3/FLUX training utilities and
pipelines compute (the scripts MAPO.md points to), so a drift in either shows here.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from trainer.families.flow import dynamic_shift_mu, flow_noise, loss_weighting, sample_u, sigmas_at
from trainer.families.flux import image_ids, pack_latents, unpack_latents
from trainer.synthetic.tiny_flow import flux_scheduler


def test_noisy_input_and_velocity_target_follow_the_formula_on_known_tensors() -> None:
    latents = torch.tensor([[2.0, -1.0]])
    noise = torch.tensor([[0.5, 3.0]])
    noisy, target = flow_noise(latents, noise, torch.tensor([0.25]))
    assert noisy.tolist() == [[0.75 * 2.0 + 0.25 * 0.5, 0.75 * -1.0 + 0.25 * 3.0]]
    assert target.tolist() == [[0.5 - 2.0, 3.0 + 1.0]]
    pure_noise, _ = flow_noise(latents, noise, torch.tensor([1.0]))
    assert torch.equal(pure_noise, noise)


def test_static_shift_sigmas_are_the_sd3_scheduler_s() -> None:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    u = torch.tensor([0.0, 0.1, 0.5, 0.73, 0.999])
    index = (u * 1000).long()
    ours = sigmas_at(u, num_train_timesteps=1000, shift=3.0, mu=None)
    torch.testing.assert_close(ours, scheduler.sigmas[index].float())
    torch.testing.assert_close(ours * 1000, scheduler.timesteps[index].float())  # SD3's timestep input


def test_dynamic_shift_is_flux_s_resolution_dependent_one() -> None:
    config = flux_scheduler().config
    for tokens in (16, 256, 1024, 4096):
        mu = dynamic_shift_mu(tokens, config)
        assert mu == pytest.approx(calculate_shift(tokens, 256, 4096, 0.5, 1.15))
        u = torch.tensor([0.2, 0.5, 0.8])
        unshifted = sigmas_at(u, num_train_timesteps=1000, shift=1.0, mu=None)
        ours = sigmas_at(u, num_train_timesteps=1000, shift=3.0, mu=mu)
        torch.testing.assert_close(ours, flux_scheduler().time_shift(mu, 1.0, unshifted))
    # A 1024 px image (4096 tokens) is noised harder than a 256 px one at the same u.
    big, small = (
        sigmas_at(torch.tensor([0.5]), num_train_timesteps=1000, shift=3.0, mu=dynamic_shift_mu(n, config))
        for n in (4096, 256)
    )
    assert big > small


@pytest.mark.parametrize("scheme", ["logit_normal", "mode", "uniform"])
def test_noise_level_density_is_diffusers_training_utils_one(scheme: str) -> None:
    torch.manual_seed(7)
    ours = sample_u(64, scheme, logit_mean=0.3, logit_std=1.2, mode_scale=1.29)  # type: ignore[arg-type]
    torch.manual_seed(7)
    theirs = compute_density_for_timestep_sampling(
        scheme if scheme != "uniform" else "none", 64, logit_mean=0.3, logit_std=1.2, mode_scale=1.29
    )
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("scheme", ["logit_normal", "mode", "uniform", "sigma_sqrt", "cosmap"])
def test_loss_weighting_is_sd3_s(scheme: str) -> None:
    sigmas = torch.tensor([0.1, 0.5, 0.9])
    ours = loss_weighting(scheme, sigmas)  # type: ignore[arg-type]
    theirs = compute_loss_weighting_for_sd3(scheme, sigmas)
    torch.testing.assert_close(torch.ones(3) if ours is None else ours, theirs)
    if scheme == "cosmap":
        assert float(ours[1]) == pytest.approx(2 / (math.pi * 0.5))  # type: ignore[index]


def test_flux_packing_matches_the_pipeline_and_round_trips() -> None:
    latents = torch.randn(3, 16, 6, 4)
    packed = pack_latents(latents)
    assert packed.shape == (3, 3 * 2, 64)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(latents, 3, 16, 6, 4))
    torch.testing.assert_close(unpack_latents(packed, 6, 4), latents)
    ids = image_ids(3, 2, device=torch.device("cpu"), dtype=torch.float32)
    torch.testing.assert_close(ids, FluxPipeline._prepare_latent_image_ids(3, 3, 2, "cpu", torch.float32))
    assert ids[:, 0].eq(0).all() and ids[-1].tolist() == [0.0, 2.0, 1.0]

"""The training objective's SFT path: the denoiser runs on the chosen half of each batch only, and the loss
and gradients are what the full [chosen; rejected] pass gave for the chosen half (issue 32)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.specs import tiny_spec
from trainer.batch import PairBatch
from trainer.families.base import ImageGeometry, ModelFamily
from trainer.families.registry import load_family
from trainer.lora import attach_lora, trainable_parameters
from trainer.objective import PairInputs, denoising_errors, prepare_inputs, training_terms
from trainer.spec import TrainSpec

CPU = torch.device("cpu")
PAIRS = 2


@pytest.fixture
def family(tiny_model: Path) -> ModelFamily:
    loaded = load_family(str(tiny_model), device=CPU, weight_dtype=torch.float32)
    targets = list(loaded.default_lora_targets)
    # As a job attaches it: none where the denoiser discards the output (it would get no gradient).
    exclude = [name for name in loaded.discarded_modules() if name.endswith(tuple(targets))]
    attach_lora(loaded.denoiser, rank=4, alpha=4.0, dropout=0.0, targets=targets, exclude=exclude)
    # LoRA B starts at zero; moved off it, the A weights get gradients too, so every LoRA weight is compared.
    with torch.no_grad():
        for parameter in trainable_parameters(loaded.denoiser):
            parameter.normal_(std=0.02)
    return loaded


def _sft(family: ModelFamily) -> TrainSpec:
    return TrainSpec.model_validate({"base_model": family.source, "method": "sft", "mixed_precision": "no"})


def _pair_inputs(family: ModelFamily, *, masked: bool) -> PairInputs:
    """PAIRS pairs of random latents at 32 px in the [chosen; rejected] layout, with a left-half mask."""
    generator = torch.Generator().manual_seed(7)
    side = 32 // family.vae_scale_factor
    latents = torch.randn(2 * PAIRS, family.latent_channels, side, side, generator=generator)
    mask = None
    if masked:
        mask = torch.zeros(2 * PAIRS, 1, side, side)
        mask[..., : side // 2] = 1.0
    conditioning = family.encode_prompts(["a red circle", "a blue square"])
    return PairInputs(latents, conditioning, ImageGeometry.uncropped(PAIRS, 32), mask)


def _todays_sft(family: ModelFamily, inputs: PairInputs) -> torch.Tensor:
    """SFT as it was before issue 32: noise and levels drawn in the same order, both halves through the
    denoiser, the loss the mean of the chosen half's errors."""
    noise = torch.randn_like(inputs.latents[:PAIRS])
    levels = family.draw_levels(PAIRS, latents=inputs.latents)
    errors = denoising_errors(family.denoiser, family, inputs, noise=noise, levels=levels)
    return errors[:PAIRS].mean()


def _loss_and_gradients(family: ModelFamily, loss: torch.Tensor) -> list[torch.Tensor]:
    parameters = trainable_parameters(family.denoiser)
    return [loss.detach(), *torch.autograd.grad(loss, parameters)]


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "masked"])
def test_sft_loss_and_gradients_are_those_of_the_chosen_half_of_a_full_pass(
    family: ModelFamily, masked: bool
) -> None:
    inputs = _pair_inputs(family, masked=masked)
    torch.manual_seed(11)
    today = _loss_and_gradients(family, _todays_sft(family, inputs))
    torch.manual_seed(11)
    loss, terms = training_terms(_sft(family), family.denoiser, family, inputs)
    now = _loss_and_gradients(family, loss)
    assert float(terms["chosen_loss"]) == pytest.approx(float(today[0]), rel=1e-6)
    for before, after in zip(today, now, strict=True):
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-8)


def test_the_denoiser_of_an_sft_step_sees_the_chosen_images_only(family: ModelFamily) -> None:
    seen = _batch_sizes(family.denoiser)
    training_terms(_sft(family), family.denoiser, family, _pair_inputs(family, masked=True))
    assert seen == [PAIRS]


def test_a_batch_prepared_for_sft_holds_the_chosen_images_and_trains_as_the_full_batch(
    family: ModelFamily,
) -> None:
    batch = _cached_batch(family)
    full = prepare_inputs(family, batch, 32)
    chosen = prepare_inputs(family, batch, 32, chosen_only=True)
    assert len(chosen.latents) == PAIRS and chosen.mask is not None and len(chosen.mask) == PAIRS
    torch.testing.assert_close(chosen.latents, full.latents[:PAIRS])
    losses = []
    for inputs in (full, chosen):
        torch.manual_seed(3)
        losses.append(training_terms(_sft(family), family.denoiser, family, inputs)[0].detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-8)


def _cached_batch(family: ModelFamily) -> PairBatch:
    """A batch as the latent cache gives it, of random images, with a zero std: drawing its latents
    takes no randomness."""
    pixels = torch.rand(2 * PAIRS, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    mean, _ = family.encode_pixels(pixels)
    geometry = ImageGeometry.uncropped(PAIRS, 32)
    prompts = ["a red circle", "a blue square"]
    return PairBatch(
        indices=torch.arange(PAIRS),
        original_sizes=geometry.original_sizes,
        crop_top_lefts=geometry.crop_top_lefts,
        prompts=prompts,
        latent_mean=mean,
        latent_std=torch.zeros_like(mean),
        conditioning=family.encode_prompts(prompts),
        mask=torch.ones(PAIRS, 1, 32, 32),
    )


def _batch_sizes(module: torch.nn.Module, *, training: bool = True) -> list[int]:
    """The number of images of every forward of `module` with gradients on (`training`) or off."""
    sizes: list[int] = []

    def record(_: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if torch.is_grad_enabled() == training:
            images = args[0] if args else next(iter(kwargs.values()))
            sizes.append(len(images))

    module.register_forward_pre_hook(record, with_kwargs=True)
    return sizes


@pytest.mark.parametrize("cache_latents", [True, False], ids=["cached", "uncached"])
def test_an_sft_job_trains_on_the_chosen_half_and_evaluates_both(
    tiny_sd: Path, color_pairs: Path, tmp_path: Path, cache_latents: bool
) -> None:
    from trainer.loop import _run_steps
    from trainer.session import open_session

    spec = tiny_spec(
        tiny_sd,
        method="sft",
        max_train_steps=2,
        cache_latents=cache_latents,
        eval_fraction=0.25,
        eval_every_n_steps=1,
    )
    session = open_session(spec, color_pairs, tmp_path)
    trained = _batch_sizes(session.lora_denoiser)
    evaluated = _batch_sizes(session.lora_denoiser, training=False)
    encoded = _batch_sizes(session.model.vae.encoder, training=False)
    _run_steps(session, 0, lambda event: None, lambda: False)
    assert trained == [2, 2], "two steps of two chosen images"
    assert evaluated and set(evaluated) == {2 * session.num_eval_pairs}, "held-out pairs score both images"
    assert encoded == ([] if cache_latents else [2, 2]), "an uncached step encodes the chosen images only"

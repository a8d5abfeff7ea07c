"""One training objective evaluation: batch -> per-pair errors -> the method's loss.

The family turns latents, noise and noise levels into the denoiser's input and target (noise
prediction for the UNet families, velocity for the flow-matching ones); everything after the per-sample
errors is the same for every family. Both halves of [chosen; rejected] share noise, level and prompt.
SFT uses the chosen half alone, so it never puts the rejected images through the VAE or the denoiser.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer import losses
from trainer.batch import PairBatch
from trainer.encoding import encode_pixels, images_per_call, sample_latents, standard_normal
from trainer.families.base import Conditioning, ImageGeometry, ModelFamily
from trainer.fast_floor import fold_reference_pays
from trainer.lora import frozen_dtype, lora_masked, lora_switched_off
from trainer.masks import latent_grid_mask, masked_mean_error
from trainer.spec import TrainSpec

# Methods whose loss reads the chosen images' errors only: their steps leave the rejected half out.
CHOSEN_ONLY_METHODS = frozenset({"sft"})


@dataclass
class PairInputs:
    """Model inputs of B pairs: latents (kB, C, h, w), conditioning of B prompts, the pairs' geometry (B
    rows), and the preference masks on the latent grid, (kB, 1, h, w), or None where the dataset has none.
    k is 2 for the [chosen; rejected] layout, 1 for the chosen images alone."""

    latents: torch.Tensor
    conditioning: Conditioning
    geometry: ImageGeometry
    mask: torch.Tensor | None = None

    @property
    def num_pairs(self) -> int:
        return len(self.geometry.original_sizes)

    @property
    def images_per_pair(self) -> int:
        return len(self.latents) // self.num_pairs

    def chosen_half(self) -> PairInputs:
        """The chosen images alone (k = 1); these inputs themselves where they hold nothing else."""
        if self.images_per_pair == 1:
            return self
        mask = None if self.mask is None else self.mask[: self.num_pairs]
        return PairInputs(self.latents[: self.num_pairs], self.conditioning, self.geometry, mask)


def trains_on_chosen_only(spec: TrainSpec) -> bool:
    """Whether the spec's loss needs the chosen images alone, so a step can leave the rejected out."""
    return spec.method in CHOSEN_ONLY_METHODS


def prepare_inputs(
    family: ModelFamily, batch: PairBatch, resolution: int, *, chosen_only: bool = False
) -> PairInputs:
    """Latents (a fresh sample of the VAE posterior, cached or not) and text conditioning of a batch;
    of its chosen images alone with `chosen_only` (no VAE encode nor latent draw for the rejected)."""
    if chosen_only:
        batch = batch.chosen_half()
    if batch.latent_mean is not None and batch.latent_std is not None and batch.conditioning is not None:
        mean, std, conditioning = batch.latent_mean, batch.latent_std, batch.conditioning
    else:
        assert batch.pixels is not None, "a batch holds pixels or cached latents"
        per_call = images_per_call(family.vae.device, resolution)
        mean, std = encode_pixels(family, batch.pixels, per_call=per_call)
        conditioning = family.encode_prompts(batch.prompts)
    geometry = ImageGeometry(batch.original_sizes, batch.crop_top_lefts, resolution)
    latents = sample_latents(family, mean, std)
    mask = None
    if batch.mask is not None:
        # One mask per pair serves every image of it.
        grid = (latents.shape[-2], latents.shape[-1])
        images_per_pair = len(latents) // len(batch)
        mask = latent_grid_mask(batch.mask.to(latents.device), grid).repeat(images_per_pair, 1, 1, 1)
    return PairInputs(latents, conditioning, geometry, mask)


def denoising_errors(
    denoiser: torch.nn.Module,
    family: ModelFamily,
    inputs: PairInputs,
    *,
    noise: torch.Tensor,
    levels: torch.Tensor,
) -> torch.Tensor:
    """Per-sample weighted mean squared error of the prediction, float32, shape (kB,) for the k images of
    each of the inputs' B pairs, averaged over the preference mask where the inputs have one. Every family
    predicts on the unpacked (kB, C, h, w) grid (FLUX unpacks its tokens in `predict`), so one mask layout
    serves all.

    noise: (B, C, h, w) and levels: (B,) are shared by the images of each pair.
    """
    dtype = frozen_dtype(denoiser)
    copies = inputs.images_per_pair
    all_noise = noise.repeat(copies, *([1] * (noise.ndim - 1)))
    all_levels = levels.repeat(copies)
    noised = family.add_noise(inputs.latents, all_noise, all_levels)
    cond = inputs.conditioning.repeat(copies).to(noised.noisy.device, dtype)
    pred = family.predict(denoiser, noised.noisy.to(dtype), all_levels, cond, inputs.geometry)
    errors = masked_mean_error(pred, noised.target, inputs.mask)
    if noised.weighting is not None:
        errors = errors * noised.weighting.float()
    return errors


def training_loss(
    spec: TrainSpec, denoiser: torch.nn.Module, family: ModelFamily, inputs: PairInputs
) -> tuple[torch.Tensor, dict[str, float]]:
    """Draw noise and noise levels, then the spec's loss and every logged term (as floats)."""
    loss, terms = training_terms(spec, denoiser, family, inputs)
    return loss, read_terms(terms)


def read_terms(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """0-d tensors -> floats in one device-to-host copy (each float() alone would wait for the device)."""
    if not terms:
        return {}
    values = torch.stack([value.detach().float() for value in terms.values()]).tolist()
    return dict(zip(terms, values, strict=True))


def training_terms(
    spec: TrainSpec, denoiser: torch.nn.Module, family: ModelFamily, inputs: PairInputs
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`training_loss` with the logged terms left as detached 0-d tensors on the device, so the loop can
    read a whole step's terms at once. SFT runs on the chosen half of `inputs` (which may hold no more):
    the same loss and gradients as the chosen half of a full pass, at half its cost."""
    num_pairs = inputs.num_pairs
    # Drawn before the method is looked at, so every method sees the same noise from the same seed.
    noise = standard_normal(inputs.latents[:num_pairs])
    levels = family.draw_levels(num_pairs, latents=inputs.latents)
    if trains_on_chosen_only(spec):
        chosen = denoising_errors(denoiser, family, inputs.chosen_half(), noise=noise, levels=levels)
        return _detached_terms(losses.sft_loss(chosen))
    return _detached_terms(_preference_loss(spec, denoiser, family, inputs, noise=noise, levels=levels))


def _preference_loss(
    spec: TrainSpec,
    denoiser: torch.nn.Module,
    family: ModelFamily,
    inputs: PairInputs,
    *,
    noise: torch.Tensor,
    levels: torch.Tensor,
) -> losses.MapoResult | losses.DpoResult:
    """MaPO's or DPO's loss, from both halves of the pairs (and DPO's reference errors)."""
    reference: torch.Tensor | None = None
    latents = inputs.latents
    if spec.method == "dpo" and fold_reference_pays(latents.device, spec.gradient_checkpointing, latents):
        errors, reference = folded_errors(denoiser, family, inputs, noise=noise, levels=levels)
    else:
        errors = denoising_errors(denoiser, family, inputs, noise=noise, levels=levels)
    chosen, rejected = errors.chunk(2)
    if spec.method == "mapo":
        margin_scale = family.margin_scale if spec.margin_scale is None else spec.margin_scale
        return losses.mapo_loss(
            chosen, rejected, beta=spec.beta, gamma=spec.gamma, num_train_timesteps=margin_scale
        )
    if reference is None:
        reference = reference_errors(denoiser, family, inputs, noise, levels)
    ref_chosen, ref_rejected = reference.chunk(2)
    beta = family.dpo_beta if spec.beta_dpo is None else spec.beta_dpo
    return losses.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta)


def _detached_terms(
    result: losses.MapoResult | losses.DpoResult | losses.SftResult,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return result.loss, {name: value.detach() for name, value in result._asdict().items()}


def reference_errors(
    denoiser: torch.nn.Module,
    family: ModelFamily,
    inputs: PairInputs,
    noise: torch.Tensor,
    levels: torch.Tensor,
) -> torch.Tensor:
    """The frozen reference is the base model: the same denoiser with its LoRA adapters switched off.

    Runs on the unwrapped module: no gradients flow, so a distributed wrapper has nothing to sync. Inference
    mode rather than no_grad: its tensors skip autograd's bookkeeping, 4% of this pass on the CPU; the clone
    outside it gives the loss an ordinary tensor, which autograd may save."""
    base: torch.nn.Module = getattr(denoiser, "module", denoiser)
    with torch.inference_mode(), lora_switched_off(base):
        errors = denoising_errors(base, family, inputs, noise=noise, levels=levels)
    return errors.clone()


def folded_errors(
    denoiser: torch.nn.Module,
    family: ModelFamily,
    inputs: PairInputs,
    *,
    noise: torch.Tensor,
    levels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO's policy and reference errors, each (2B,), from one pass over every pair twice: the second copy
    with the LoRA's output masked to zero, which is the base model. Where a pass of B pairs leaves the
    machine idle (the CPU at small sizes) this costs less than a second, gradient-free pass."""
    chosen, rejected = inputs.latents.chunk(2)
    geometry = inputs.geometry
    mask = None
    if inputs.mask is not None:
        chosen_mask, rejected_mask = inputs.mask.chunk(2)
        mask = torch.cat([chosen_mask, chosen_mask, rejected_mask, rejected_mask])
    doubled = PairInputs(
        torch.cat([chosen, chosen, rejected, rejected]),
        inputs.conditioning.repeat(2),
        ImageGeometry(
            geometry.original_sizes.repeat(2, 1), geometry.crop_top_lefts.repeat(2, 1), geometry.resolution
        ),
        mask,
    )
    num_pairs = len(chosen)
    policy = torch.tensor([True, False], device=chosen.device).repeat_interleave(num_pairs).repeat(2)
    with lora_masked(denoiser, policy):
        errors = denoising_errors(
            denoiser,
            family,
            doubled,
            noise=noise.repeat(2, *([1] * (noise.ndim - 1))),
            levels=levels.repeat(2),
        )
    return errors[policy], errors[~policy].detach()

"""What the flow-matching families (SD3/SD3.5, FLUX.1) share: noise levels, noising, loss weighting.

x_t = (1 - sigma) z + sigma noise, and the model predicts the velocity noise - z. Sigma is drawn per
pair: u from the weighting scheme (logit-normal by default), then the scheduler's sigma at index
u * num_train_timesteps, with the scheduler's shift (SD3: a static shift of 3; FLUX: one that grows with
the image's token count, `use_dynamic_shifting`). The facts follow diffusers' SD3/FLUX LoRA scripts and
`training_utils` (compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from trainer.export import to_kohya
from trainer.families.base import ModelFamily, Noised
from trainer.spec import WeightingScheme

EVALUATION_SIGMAS = (0.1, 0.3, 0.5, 0.7, 0.9)


def sample_u(
    num: int,
    scheme: WeightingScheme,
    *,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    device: torch.device | None = None,
) -> torch.Tensor:
    """(num,) points in [0, 1] where the noise level is read: sigmoid(N(mean, std)) for logit_normal,
    SD3's "mode" density, else uniform (sigma_sqrt and cosmap weight the loss instead)."""
    if scheme == "logit_normal":
        return torch.sigmoid(torch.normal(logit_mean, logit_std, size=(num,), device=device))
    u = torch.rand(num, device=device)
    if scheme == "mode":
        return 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return u


def sigmas_at(u: torch.Tensor, *, num_train_timesteps: int, shift: float, mu: float | None) -> torch.Tensor:
    """The scheduler's training sigma at index floor(u * N): the unshifted sigma (N - i) / N, then the
    static shift s' = shift s / (1 + (shift - 1) s), or with `mu` (dynamic shifting) the exponential
    one s' = e^mu / (e^mu + 1/s - 1)."""
    index = (u * num_train_timesteps).long().clamp(0, num_train_timesteps - 1)
    sigma = (num_train_timesteps - index).to(torch.float32) / num_train_timesteps
    if mu is not None:
        return math.exp(mu) / (math.exp(mu) + (1 / sigma - 1))
    return shift * sigma / (1 + (shift - 1) * sigma)


def dynamic_shift_mu(image_seq_len: int, scheduler_config: Any) -> float:
    """FLUX's mu: linear in the image's token count, base_shift at base_image_seq_len, max_shift at
    max_image_seq_len (the pipeline's `calculate_shift`)."""
    base_len, max_len = scheduler_config.base_image_seq_len, scheduler_config.max_image_seq_len
    slope = (scheduler_config.max_shift - scheduler_config.base_shift) / (max_len - base_len)
    return float(image_seq_len * slope + scheduler_config.base_shift - slope * base_len)


def loss_weighting(scheme: WeightingScheme, sigmas: torch.Tensor) -> torch.Tensor | None:
    """Per-sample loss weights: sigma^-2 for sigma_sqrt, 2 / (pi (1 - 2 s + 2 s^2)) for cosmap, else
    none (the density of the levels already does the weighting)."""
    if scheme == "sigma_sqrt":
        return sigmas.float() ** -2.0
    if scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigmas.float() + 2 * sigmas.float() ** 2))
    return None


def flow_noise(
    latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, velocity target) for latents z and noise of shape (N, ...), sigmas (N,)."""
    s = sigmas.to(latents.dtype).reshape(-1, *([1] * (latents.ndim - 1)))
    return (1 - s) * latents + s * noise, noise - latents


KOHYA_TRANSFORMER_PREFIX = "lora_transformer_"

# Measured on the shapes bases (docs/experiments.md, section 2b): velocity errors are 3.6 times a trained
# UNet's noise errors there (about ten on real models), and a sweep of the prefer-red job on shapes-flux
# chose T = 100 (the most held-out pairs ranked right; 30-1000 all learn) and beta = 500 (DPO moves the
# samples as far as beta = 5000 does on shapes-sdxl).
FLOW_MARGIN_SCALE = 100.0
FLOW_DPO_BETA = 500.0


class FlowFamily(ModelFamily):
    """A flow-matching transformer family; subclasses say how to encode text and call the model."""

    default_weighting: ClassVar[WeightingScheme] = "logit_normal"
    # Both streams of the joint attention (the image and the text tokens' projections).
    default_lora_targets: ClassVar[tuple[str, ...]] = (
        "to_q",
        "to_k",
        "to_v",
        "to_out.0",
        "add_q_proj",
        "add_k_proj",
        "add_v_proj",
        "to_add_out",
    )

    def __init__(self, *, options: dict[str, Any], **components: Any) -> None:
        super().__init__(options=options, **components)
        self.weighting: WeightingScheme = options.get("weighting_scheme") or self.default_weighting
        self.logit_mean = _option(options, "logit_mean", 0.0)
        self.logit_std = _option(options, "logit_std", 1.0)
        self.mode_scale = _option(options, "mode_scale", 1.29)

    @property
    def prediction_type(self) -> str:
        return "flow"

    @property
    def margin_scale(self) -> float:
        return FLOW_MARGIN_SCALE

    @property
    def dpo_beta(self) -> float:
        return FLOW_DPO_BETA

    def kohya_state(self, state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
        return to_kohya(state, alpha, prefix=KOHYA_TRANSFORMER_PREFIX)

    def shift_mu(self, latents: torch.Tensor) -> float | None:
        """mu of dynamic shifting for these latents, or None where the scheduler shifts statically."""
        if not self.scheduler.config.get("use_dynamic_shifting"):
            return None
        tokens = (latents.shape[-2] // 2) * (latents.shape[-1] // 2)
        return dynamic_shift_mu(tokens, self.scheduler.config)

    def draw_levels(self, num: int, *, latents: torch.Tensor) -> torch.Tensor:
        u = sample_u(
            num,
            self.weighting,
            logit_mean=self.logit_mean,
            logit_std=self.logit_std,
            mode_scale=self.mode_scale,
            device=latents.device,
        )
        return self.sigmas(u, latents)

    def sigmas(self, u: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        shift = float(self.scheduler.config.get("shift", 1.0))
        return sigmas_at(
            u, num_train_timesteps=self.num_train_timesteps, shift=shift, mu=self.shift_mu(latents)
        )

    def evaluation_levels(self, *, latents: torch.Tensor) -> list[torch.Tensor]:
        return [torch.tensor(s) for s in EVALUATION_SIGMAS]

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, levels: torch.Tensor) -> Noised:
        noisy, target = flow_noise(latents, noise, levels)
        return Noised(noisy, target, loss_weighting(self.weighting, levels))


def _option(options: dict[str, Any], name: str, default: float) -> float:
    value = options.get(name)
    return default if value is None else float(value)

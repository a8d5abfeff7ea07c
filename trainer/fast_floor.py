"""Set-up that makes the floor (the LoRA denoiser's forward + backward) and the update cheaper, chosen by
device: what pays on a GPU is not what pays on a CPU (docs/benchmarks.md, "Faster floor").

- channels_last for the conv UNets on CUDA (cuDNN's NHWC convolutions); on the CPU it measured slower.
- torch.compile of the denoiser's repeated blocks is trainer.compiling's (it is decided during the run).
- DPO's reference folded into the policy pass (trainer.objective.folded_errors) on the CPU at small
  latent sizes, where a pass of 2 pairs leaves cores idle; not at 128 px and up, where it did not pay;
  not with gradient checkpointing, whose recomputation in
  the backward would run without the reference mask, and not on CUDA, where the real-size pass is
  compute-bound and the doubled backward costs more than the separate gradient-free pass.
- AdamW fused into one kernel per parameter when every trainable parameter is on the CPU or on CUDA;
  foreach (a few batched kernels) elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import UNet2DConditionModel


def channels_last_pays(device: torch.device, denoiser: torch.nn.Module) -> bool:
    """Whether the denoiser should train in channels_last: a conv UNet on CUDA."""
    return device.type == "cuda" and isinstance(denoiser, UNet2DConditionModel)


def prepare_denoiser(denoiser: torch.nn.Module, device: torch.device) -> None:
    """Put the denoiser (LoRA attached, on `device`) in the layout that pays there."""
    if channels_last_pays(device, denoiser):
        # torch's stubs lack Module.to's memory_format keyword, which the runtime accepts.
        denoiser.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


# Devices whose AdamW has a fused kernel in torch; its CPU kernel made the small SDXL UNet's LoRA update
# (clip + AdamW over 176 tensors) 2.2 ms instead of 3.8 ms with foreach (docs/benchmarks.md).
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def adamw_options(trainable: Sequence[torch.nn.Parameter]) -> dict[str, Any]:
    """torch.optim.AdamW keyword arguments for these parameters: fused when they all live on one device
    type that has the fused kernel, foreach (a few batched kernels) otherwise."""
    kinds = {p.device.type for p in trainable}
    if len(kinds) == 1 and kinds <= set(FUSED_ADAMW_DEVICES):
        return {"fused": True}
    return {"foreach": True}


def reapply_adamw_options(optimizer: Any) -> None:
    """Give every parameter group of a loaded optimizer the options `adamw_options` picks for it now.

    Loading a state dict puts the saved groups back, options included, so a checkpoint of a foreach run
    (every one written before AdamW was fused on the CPU) would otherwise resume foreach. The fused
    kernel keeps each parameter's step count as a float32 tensor on the parameter's device."""
    for group in optimizer.param_groups:
        group.update({"foreach": None, "fused": None, **adamw_options(group["params"])})
        if not group["fused"]:
            continue
        for param in group["params"]:
            state = optimizer.state.get(param)
            if state and torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(param.device, torch.float32)


# The largest latent (h * w) for which folding measured faster on the CPU: 8 x 8 (64 px through SDXL's VAE)
# took 0.78-0.83 x the separate pass; 16 x 16 (128 px) took 0.98-1.16 x, so it is not folded.
FOLD_MAX_LATENT_AREA = 64


def fold_reference_pays(device: torch.device, gradient_checkpointing: bool, latents: torch.Tensor) -> bool:
    """Whether DPO's reference errors come from the policy's pass (see the module's note); `latents` are
    the batch's (2B, C, h, w)."""
    small = latents.shape[-2] * latents.shape[-1] <= FOLD_MAX_LATENT_AREA
    return device.type == "cpu" and small and not gradient_checkpointing

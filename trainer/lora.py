"""The trainable LoRA adapter on a family's denoiser (UNet or transformer), and modes around it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer

from trainer.errors import ModelLoadError
from trainer.lora_linear import FusedLoraLinear, masked_items


def attach_lora(
    denoiser: torch.nn.Module,
    *,
    rank: int,
    alpha: float,
    dropout: float,
    targets: list[str],
    exclude: list[str] | None = None,
    fused: bool = True,
) -> LoraConfig:
    """Add a trainable LoRA adapter (gaussian init, so B = 0 and the model is unchanged at step 0) on the
    modules whose names end in one of `targets`, except the modules named in `exclude`, and keep its
    weights in float32 whatever the base dtype, as mixed-precision training needs. `fused` uses our
    faster LoRA linear (lora_linear.py); a quantized base takes peft's own layer for its quantized class
    (bitsandbytes' and torchao's linears are `nn.Linear` subclasses, so ours would otherwise claim them)."""
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        init_lora_weights="gaussian",
        target_modules=targets,
        exclude_modules=exclude or None,
    )
    # peft's hook for custom layer classes: its own LoRA linear with a faster plain case (lora_linear.py).
    if fused:
        config._register_custom_module({torch.nn.Linear: FusedLoraLinear})
    try:
        denoiser.add_adapter(config)  # type: ignore[operator]
    except ValueError as exc:
        raise ModelLoadError(f"lora_target_modules {targets} match no module of the denoiser: {exc}") from exc
    for param in denoiser.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    return config


@contextmanager
def inference_mode(module: torch.nn.Module) -> Iterator[None]:
    """Every submodule in eval mode for the block, then each back in the mode it had.

    The base model is loaded in eval mode, but the LoRA layers peft adds afterwards start in train mode,
    so their dropout would otherwise also act on held-out scoring and validation images."""
    modes = [(sub, sub.training) for sub in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for sub, training in modes:
            sub.train(training)


def trainable_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def frozen_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype of the frozen base weights (the LoRA's stay float32): what inputs are cast to. A
    quantized base's packed 4-bit weights are bytes; its float parts (norms, biases, and what it keeps
    unquantized) are held in the dtype it computes in."""
    return next(p for p in module.parameters() if not p.requires_grad and p.is_floating_point()).dtype


def lora_layers(module: torch.nn.Module) -> list[LoraLayer]:
    """Every peft LoRA layer inside `module`, in module order."""
    return [layer for layer in module.modules() if isinstance(layer, LoraLayer)]


@contextmanager
def lora_switched_off(module: torch.nn.Module) -> Iterator[None]:
    """Within the block, `module` is its base model: every LoRA layer that was on passes its input through
    its base layer alone, and is on again after the block.

    It flips each layer's own switch. peft's `disable_adapters()` / `enable_adapters()` also set
    requires_grad on every LoRA weight, off and back on, which took 7 ms of each DPO step on the small
    SDXL UNet (docs/benchmarks.md); the passes this serves run without gradients, so that is not needed."""
    layers = lora_layers(module)
    if any(layer.merged for layer in layers):
        # peft's forward would unmerge a switched-off merged layer in place, in whatever mode the pass runs.
        raise ValueError("cannot switch off a merged LoRA: unmerge it first")
    layers = [layer for layer in layers if not layer.disable_adapters]
    for layer in layers:
        layer._disable_adapters = True
    try:
        yield
    finally:
        for layer in layers:
            layer._disable_adapters = False


@contextmanager
def lora_masked(module: torch.nn.Module, keep: torch.Tensor) -> Iterator[None]:
    """Within the block, the LoRA adds its output only to the batch items where `keep` (a (N,) bool) is
    True; the others see the base model. Every LoRA layer's input must have the batch axis first."""

    def mask(layer: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        return masked_items(output, keep, items=output.shape[0])

    layers = lora_layers(module)
    fused = [layer for layer in layers if isinstance(layer, FusedLoraLinear)]
    # Fused layers mask their rank-wide product themselves; a hook on lora_B would send them to peft's path.
    handles = [
        up.register_forward_hook(mask)
        for layer in layers
        if not isinstance(layer, FusedLoraLinear)
        for up in layer.lora_B.values()
    ]
    for layer in fused:
        layer.batch_keep = keep
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for layer in fused:
            layer.batch_keep = None

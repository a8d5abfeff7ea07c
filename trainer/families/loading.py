"""Loading one component of a base model at its precision: what every family's `load` and
`load_text_stack` call instead of `from_pretrained` with a dtype, so a quantized base (QLoRA) needs
nothing from a family (trainer/quantization.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from trainer.quantization import (
    Precision,
    diffusers_config,
    meta_diffusers_model,
    meta_transformers_model,
    transformers_config,
)


@dataclass(frozen=True)
class Loading:
    """Where the base model comes from, the device it trains on, and how its frozen parts are held."""

    source: str
    device: torch.device
    denoiser: Precision
    text: Precision

    def denoiser_model(self, model_class: Any, subfolder: str) -> Any:
        """The UNet or transformer, at the denoiser's precision."""
        config = None
        if self.denoiser.quantized:
            meta = meta_diffusers_model(model_class, self.source, subfolder)
            config = diffusers_config(self.denoiser, self.device, meta)
        model = model_class.from_pretrained(
            self.source,
            subfolder=subfolder,
            torch_dtype=self.denoiser.storage_dtype,
            **_quantized_arguments(config, self.device),
        )
        keep_4bit_weights_trainable(model)
        return model

    def text_encoder(self, model_class: Any, subfolder: str) -> Any:
        """A transformers text encoder, at the text encoders' precision."""
        config = None
        if self.text.quantized:
            meta = meta_transformers_model(model_class, self.source, subfolder)
            config = transformers_config(self.text, self.device, meta)
        return model_class.from_pretrained(
            self.source,
            subfolder=subfolder,
            dtype=self.text.storage_dtype,
            **_quantized_arguments(config, self.device),
        )


def _quantized_arguments(config: Any | None, device: torch.device) -> dict[str, Any]:
    """bitsandbytes quantizes as the shards load, straight onto the training device (`device_map` puts
    every module there), so the host never holds the model in full precision. torchao's weights are
    quantized on the host and then moved: diffusers 0.42 leaves them unquantized when a device_map is
    given (seen on the CPU with torchao 0.18)."""
    if config is None:
        return {}
    if "BitsAndBytes" not in type(config).__name__:
        return {"quantization_config": config}
    return {"quantization_config": config, "device_map": {"": _device_map_target(device)}}


def _device_map_target(device: torch.device) -> int | str:
    if device.type == "cuda":
        return device.index if device.index is not None else torch.cuda.current_device()
    return device.type


def keep_4bit_weights_trainable(model: torch.nn.Module) -> None:
    """bitsandbytes' `Linear4bit` on an AVX512-BF16 CPU repacks its weight, for good, into an
    inference-only layout the first time it runs in eval mode on an input without gradients, and from then
    on computes without autograd: the input gradient the LoRA layers before it need would be gone, and
    DPO's reference pass (inference mode) fails on the in-place repack. A frozen base that trains is in
    eval mode and meets such inputs, so the repack is switched off (its flag is per layer)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            setattr(module, "support_avx512bf16_for_cpu", False)  # noqa: B010  # a bitsandbytes flag

"""How the frozen base is held in memory: a float dtype, or quantized weights (QLoRA), applied at load time
through diffusers' and transformers' own quantization configs. No quantizer of our own.

* `int8`: torchao's int8 weight-only (`Int8WeightOnlyConfig`), through `TorchAoConfig`. About half of
  bf16's bytes per weight; runs forward and backward on the CPU and CUDA.
* `nf4`: bitsandbytes' 4-bit NormalFloat with double quantization (the QLoRA paper's recipe, which
  diffusers recommends for training on a 4-bit base), through `BitsAndBytesConfig`. About 0.28 of bf16.
* `fp8`: torchao's float8 weight-only, on CUDA GPUs of compute capability 8.9 or more (Ada, Hopper and
  later: the ones with float8 tensor cores); refused anywhere else.

Two things diffusers 0.42 does not do that we need, each kept to the least that works:
* Its bitsandbytes quantizers refuse a machine without a GPU (`validate_environment`: "No GPU found"),
  though bitsandbytes >= 0.48 ships CPU kernels for 4-bit. On a machine without an accelerator
  `allow_bitsandbytes_on_cpu` registers subclasses that skip that one check, so CPU workers (and the tests)
  train on an nf4 base through the same code path a GPU takes.
* bitsandbytes' CPU 4-bit kernel packs each weight's rows in blocks of 64 input features
  (`_convert_weight_packed_for_cpu`) and fails on a layer whose input width is not a multiple of it. On
  the CPU such layers (a handful of small embedding projections) stay in the compute dtype, named by
  `not_packable_on_cpu` from the model's own config on the meta device.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import torch
from accelerate import init_empty_weights

from trainer.plan import CPU_4BIT_BLOCK  # the planner counts the same layers as float

Quantized = Literal["int8", "nf4", "fp8"]
FLOAT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
QUANTIZED: tuple[Quantized, ...] = ("int8", "nf4", "fp8")
FP8_MIN_CAPABILITY = (8, 9)


class PrecisionUnavailableError(ValueError):
    """The precision cannot run on this device; `field` is the spec field that asked for it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Precision:
    """How one frozen component is held: `name` is a float dtype's or a quantization's, and
    `compute_dtype` what its layers compute in (the mixed-precision dtype, float32 without CUDA)."""

    name: str
    compute_dtype: torch.dtype

    @property
    def quantized(self) -> bool:
        return self.name in QUANTIZED

    @property
    def storage_dtype(self) -> torch.dtype:
        """The dtype the component is loaded in: its own for a float precision, else the compute dtype
        (the non-quantized parts of a quantized model, norms and biases, are held in it)."""
        return FLOAT_DTYPES.get(self.name, self.compute_dtype)


def precision_of(requested: str | None, compute_dtype: torch.dtype) -> Precision:
    """The spec's `base_precision` / `text_encoder_precision` (None: the compute dtype)."""
    if requested is None:
        name = next(k for k, v in FLOAT_DTYPES.items() if v == compute_dtype)
        return Precision(name, compute_dtype)
    if requested == "auto":
        raise ValueError("resolve base_precision 'auto' with the job's plan first (trainer/plan.py)")
    return Precision(requested, compute_dtype)


def check_device(precision: Precision, device: torch.device, *, field: str) -> None:
    """Raise PrecisionUnavailableError when `precision` cannot run on `device`, naming field and device."""
    if precision.name != "fp8":
        return
    if device.type != "cuda":
        raise PrecisionUnavailableError(
            field,
            f"{field} fp8 needs a CUDA GPU of compute capability >= 8.9; this worker's device is {device}",
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        raise PrecisionUnavailableError(
            field,
            f"{field} fp8 needs compute capability >= 8.9; this worker's {name} has "
            f"{capability[0]}.{capability[1]} (use int8 or nf4)",
        )


def diffusers_config(precision: Precision, device: torch.device, meta_model: Any) -> Any | None:
    """The `quantization_config` to load a diffusers model with, or None for a float precision.
    `meta_model` is the model built on the meta device (for the layers the CPU cannot pack)."""
    if not precision.quantized:
        return None
    if precision.name == "nf4":
        from diffusers import BitsAndBytesConfig

        allow_bitsandbytes_on_cpu()
        return BitsAndBytesConfig(**_nf4_arguments(precision, device, meta_model))
    from diffusers import TorchAoConfig

    return TorchAoConfig(_torchao_quant_type(precision))


def transformers_config(precision: Precision, device: torch.device, meta_model: Any) -> Any | None:
    """The same as `diffusers_config`, in transformers' classes (for text encoders)."""
    if not precision.quantized:
        return None
    if precision.name == "nf4":
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(**_nf4_arguments(precision, device, meta_model))
    from transformers import TorchAoConfig

    return TorchAoConfig(_torchao_quant_type(precision))


def _nf4_arguments(precision: Precision, device: torch.device, meta_model: Any) -> dict[str, Any]:
    skip = not_packable_on_cpu(meta_model) if device.type == "cpu" else []
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": precision.compute_dtype,
        "llm_int8_skip_modules": skip or None,
    }


def _torchao_quant_type(precision: Precision) -> Any:
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

    return Int8WeightOnlyConfig() if precision.name == "int8" else Float8WeightOnlyConfig()


def not_packable_on_cpu(meta_model: torch.nn.Module) -> list[str]:
    """Names of the linear layers whose input width bitsandbytes' CPU 4-bit kernel cannot pack."""
    return [
        name
        for name, module in meta_model.named_modules()
        if isinstance(module, torch.nn.Linear) and module.in_features % CPU_4BIT_BLOCK
    ]


def meta_diffusers_model(model_class: Any, source: str, subfolder: str) -> torch.nn.Module:
    """`model_class` of `source`'s config, built without memory (weights on the meta device)."""
    config = model_class.load_config(source, subfolder=subfolder)
    with init_empty_weights():
        model: torch.nn.Module = model_class.from_config(config)
    return model


def meta_transformers_model(model_class: Any, source: str, subfolder: str) -> torch.nn.Module:
    """The same for a transformers model (a text encoder)."""
    config = model_class.config_class.from_pretrained(source, subfolder=subfolder)
    with init_empty_weights():
        model: torch.nn.Module = model_class._from_config(config)
    return model


def is_quantized(model: torch.nn.Module) -> bool:
    """Whether `model` was loaded with a quantization config (diffusers and transformers both mark it)."""
    return getattr(model, "hf_quantizer", None) is not None or bool(getattr(model, "is_quantized", False))


@cache
def allow_bitsandbytes_on_cpu() -> None:
    """Let diffusers' bitsandbytes quantizers load on a machine without an accelerator (see above)."""
    if torch.cuda.is_available() or torch.xpu.is_available() or torch.mps.is_available():
        return
    from diffusers.quantizers import auto
    from diffusers.quantizers.bitsandbytes.bnb_quantizer import BnB4BitDiffusersQuantizer

    class CpuBnB4BitQuantizer(BnB4BitDiffusersQuantizer):  # type: ignore[misc]
        def validate_environment(self, *args: Any, **kwargs: Any) -> None:
            """Everything but the GPU check (bitsandbytes >= 0.48 has CPU kernels)."""

    auto.AUTO_QUANTIZER_MAPPING["bitsandbytes_4bit"] = CpuBnB4BitQuantizer

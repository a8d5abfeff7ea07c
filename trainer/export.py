"""Write the trained LoRA: diffusers format (what `pipeline.load_lora_weights` reads) and kohya/ComfyUI keys.

diffusers: `pytorch_lora_weights.safetensors`, keys `unet.<module>.lora.down.weight` / `.lora.up.weight`, with
the peft LoraConfig stored in the file's metadata so lora_alpha survives the round trip.
kohya: `lora_unet_<module with _>.lora_down.weight`, `.lora_up.weight` and a scalar `.alpha` per module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FILE = "lora_kohya.safetensors"
KOHYA_PREFIX = "lora_unet_"
_DOWN, _UP = ".lora_down.weight", ".lora_up.weight"


def lora_state_dict(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The adapter's weights keyed `<module>.lora.down.weight` / `.lora.up.weight`, float32, on the CPU."""
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    return {key: value.detach().float().cpu().contiguous() for key, value in state.items()}


def save_diffusers_lora(unet: UNet2DConditionModel, config: LoraConfig, family: str, out_dir: Path) -> Path:
    """Save `pytorch_lora_weights.safetensors` under out_dir; returns the file's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline_cls: Any = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipeline_cls.save_lora_weights(
        out_dir,
        unet_lora_layers=lora_state_dict(unet),
        unet_lora_adapter_metadata=config.to_dict(),
        weight_name=DIFFUSERS_FILE,
    )
    return out_dir / DIFFUSERS_FILE


def to_kohya(state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """Convert diffusers keys (`<module>.lora.down.weight`, optionally `unet.`-prefixed) to kohya's."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, kind = _split_lora_key(key.removeprefix("unet."))
        name = KOHYA_PREFIX + module.replace(".", "_")
        out[name + (_DOWN if kind == "down" else _UP)] = value
        out[name + ".alpha"] = torch.tensor(float(alpha))
    return out


def from_kohya(
    kohya: dict[str, torch.Tensor], module_names: list[str]
) -> tuple[dict[str, torch.Tensor], float]:
    """Inverse of `to_kohya`. Underscores are ambiguous, so the UNet's module names resolve them."""
    by_flat = {KOHYA_PREFIX + name.replace(".", "_"): name for name in module_names}
    state: dict[str, torch.Tensor] = {}
    alphas = set()
    for key, value in kohya.items():
        flat, _, suffix = key.partition(".")
        module = by_flat.get(flat)
        if module is None:
            raise KeyError(f"kohya key {key!r} names no module of this UNet")
        if suffix == "alpha":
            alphas.add(float(value))
            continue
        kind = {"lora_down.weight": "down", "lora_up.weight": "up"}[suffix]
        state[f"{module}.lora.{kind}.weight"] = value
    if len(alphas) != 1:
        raise ValueError(f"expected one alpha shared by all modules, found {sorted(alphas)}")
    return state, alphas.pop()


def save_kohya_lora(unet: UNet2DConditionModel, alpha: float, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / KOHYA_FILE
    save_file(to_kohya(lora_state_dict(unet), alpha), str(path), metadata={"ss_network_alpha": str(alpha)})
    return path


def _split_lora_key(key: str) -> tuple[str, str]:
    for kind in ("down", "up"):
        marker = f".lora.{kind}.weight"
        if key.endswith(marker):
            return key.removesuffix(marker), kind
    raise KeyError(f"not a LoRA weight key: {key!r}")

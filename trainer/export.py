"""Write the trained LoRA: diffusers format (what `pipeline.load_lora_weights` reads) and kohya/ComfyUI keys.

diffusers: `pytorch_lora_weights.safetensors`, written by the family's pipeline class (`unet.` keys in the
`lora.down` / `lora.up` naming for the UNet families, `transformer.` keys in peft's `lora_A` / `lora_B`
naming for the transformers), with the peft LoraConfig in the file's metadata so lora_alpha survives.
kohya/ComfyUI: `<prefix><module with _>.lora_down.weight`, `.lora_up.weight` and a scalar `.alpha` per
module; the prefix is `lora_unet_` for the UNet families and `lora_transformer_` for SD3 and FLUX (the
naming ComfyUI's loader maps for those models, and that diffusers' FLUX loader converts back).
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig
from safetensors.torch import save_file

from trainer.families.base import ModelFamily

DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FILE = "lora_kohya.safetensors"
KOHYA_PREFIX = "lora_unet_"
_DOWN, _UP = ".lora_down.weight", ".lora_up.weight"
# The two namings of a LoRA weight's key suffix that diffusers files use: its own and peft's.
_SUFFIXES = {"down": (".lora.down.weight", ".lora_A.weight"), "up": (".lora.up.weight", ".lora_B.weight")}


def save_diffusers_lora(
    denoiser: torch.nn.Module, config: LoraConfig, family: ModelFamily, out_dir: Path
) -> Path:
    """Save `pytorch_lora_weights.safetensors` under out_dir; returns the file's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    family.save_lora(family.lora_state(denoiser), config, out_dir, DIFFUSERS_FILE)
    return out_dir / DIFFUSERS_FILE


def to_kohya(
    state: dict[str, torch.Tensor], alpha: float, *, prefix: str = KOHYA_PREFIX
) -> dict[str, torch.Tensor]:
    """Convert diffusers keys (`<module>.lora.down.weight` or peft's `<module>.lora_A.weight`, optionally
    `unet.`/`transformer.`-prefixed) to kohya's, with `prefix`."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, kind = _split_lora_key(key.removeprefix("unet.").removeprefix("transformer."))
        name = prefix + module.replace(".", "_")
        out[name + (_DOWN if kind == "down" else _UP)] = value
        out[name + ".alpha"] = torch.tensor(float(alpha))
    return out


def from_kohya(
    kohya: dict[str, torch.Tensor], module_names: list[str], *, prefix: str = KOHYA_PREFIX
) -> tuple[dict[str, torch.Tensor], float]:
    """Inverse of `to_kohya`, to diffusers' `lora.down` naming. Underscores are ambiguous, so the
    denoiser's module names resolve them."""
    by_flat = {prefix + name.replace(".", "_"): name for name in module_names}
    state: dict[str, torch.Tensor] = {}
    alphas = set()
    for key, value in kohya.items():
        flat, _, suffix = key.partition(".")
        module = by_flat.get(flat)
        if module is None:
            raise KeyError(f"kohya key {key!r} names no module of this denoiser")
        if suffix == "alpha":
            alphas.add(float(value))
            continue
        kind = {"lora_down.weight": "down", "lora_up.weight": "up"}[suffix]
        state[f"{module}.lora.{kind}.weight"] = value
    if len(alphas) != 1:
        raise ValueError(f"expected one alpha shared by all modules, found {sorted(alphas)}")
    return state, alphas.pop()


def save_kohya_lora(denoiser: torch.nn.Module, family: ModelFamily, alpha: float, out_dir: Path) -> Path:
    """Save the ComfyUI/kohya file under out_dir; returns the file's path."""
    state = family.kohya_state(family.lora_state(denoiser), alpha)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / KOHYA_FILE
    save_file(state, str(path), metadata={"ss_network_alpha": str(alpha)})
    return path


def _split_lora_key(key: str) -> tuple[str, str]:
    for kind, markers in _SUFFIXES.items():
        for marker in markers:
            if key.endswith(marker):
                return key.removesuffix(marker), kind
    raise KeyError(f"not a LoRA weight key: {key!r}")

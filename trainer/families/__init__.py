"""Model families: what differs between the base models we train, behind one interface.

This module is torch-free (the API reads it) and holds `FAMILIES`, the only list of family names. Each row
says what a job spec and the API need to know about a family: its pipeline classes (as `model_index.json`
records them), its objective and denoiser folder, the spec fields only it takes, how its native
resolution is read from the folder's JSON files, and where its tiny offline builder lives.

Everything else about a family lives in its own module, `trainer/families/<name>.py`, which defines one
`ModelFamily` subclass (trainer/families/base.py); `trainer.families.registry` finds it there. Adding a
family is that module, a row below, its tiny builder and a README row: see docs/architecture.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

FamilyName = str  # a key of FAMILIES
Objective = Literal["noise_prediction", "flow_matching"]
MODEL_INDEX = "model_index.json"
# Reads a component's JSON config from a model folder: (component, file name) -> the parsed dict.
ConfigReader = Callable[[str, str], dict[str, Any]]


def denoiser_size_times_vae_factor(read: ConfigReader, denoiser: str) -> int:
    """The denoiser's latent `sample_size` times the VAE's downsampling (UNets, SD3)."""
    vae = read("vae", "config.json")
    return int(read(denoiser, "config.json")["sample_size"]) * int(2 ** (len(vae["block_out_channels"]) - 1))


def vae_sample_size(read: ConfigReader, denoiser: str) -> int:
    """The VAE's `sample_size`, for transformers that record no image size (FLUX.1: 1024)."""
    return int(read("vae", "config.json")["sample_size"])


def fixed_resolution(pixels: int) -> Callable[[ConfigReader, str], int]:
    """A family whose configs record no size at all: the resolution its pipeline draws by default."""

    def read(_read: ConfigReader, _denoiser: str) -> int:
        return pixels

    return read


@dataclass(frozen=True)
class FamilyFacts:
    """What a job spec, the API and the tests may know of a family without loading it.

    `fields` lists the TrainSpec fields that apply only to some families and apply to this one; a spec
    that sets one of the others is refused. `resolution_multiple` is what a training resolution must be
    a multiple of: the VAE's downsampling (8), times the patch size for transformers that cut latents into
    2x2 patches (16). `tiny_builder` is "module:function" of the builder of its tiny random pipeline
    (signature of trainer.synthetic.tiny.TinyBuilder).
    """

    name: FamilyName
    label: str  # what people call the models: "SD3/SD3.5"
    pipeline_classes: tuple[str, ...]  # the first is the one adapters are saved with
    objective: Objective
    denoiser: Literal["unet", "transformer"]
    fields: frozenset[str]
    native_resolution: Callable[[ConfigReader, str], int]
    resolution_multiple: int
    tiny_builder: str

    @property
    def pipeline_class(self) -> str:
        return self.pipeline_classes[0]

    @property
    def module(self) -> str:
        """The module that defines this family's ModelFamily subclass."""
        return f"trainer.families.{self.name}"


FLOW_FIELDS = frozenset({"weighting_scheme", "logit_mean", "logit_std", "mode_scale"})
_ROWS = [
    FamilyFacts(
        name="sd",
        label="SD 1.x/2.x",
        pipeline_classes=("StableDiffusionPipeline",),
        objective="noise_prediction",
        denoiser="unet",
        fields=frozenset(),
        native_resolution=denoiser_size_times_vae_factor,
        resolution_multiple=8,
        tiny_builder="trainer.synthetic.tiny:build_sd",
    ),
    FamilyFacts(
        name="sdxl",
        label="SDXL",
        pipeline_classes=("StableDiffusionXLPipeline",),
        objective="noise_prediction",
        denoiser="unet",
        fields=frozenset(),
        native_resolution=denoiser_size_times_vae_factor,
        resolution_multiple=8,
        tiny_builder="trainer.synthetic.tiny:build_sdxl",
    ),
    FamilyFacts(
        name="sd3",
        label="SD3/SD3.5",
        pipeline_classes=("StableDiffusion3Pipeline",),
        objective="flow_matching",
        denoiser="transformer",
        fields=FLOW_FIELDS | {"use_t5"},
        native_resolution=denoiser_size_times_vae_factor,
        resolution_multiple=16,
        tiny_builder="trainer.synthetic.tiny_flow:build_sd3",
    ),
    FamilyFacts(
        name="flux",
        label="FLUX.1",
        pipeline_classes=("FluxPipeline",),
        objective="flow_matching",
        denoiser="transformer",
        fields=FLOW_FIELDS | {"guidance"},
        native_resolution=vae_sample_size,
        resolution_multiple=16,
        tiny_builder="trainer.synthetic.tiny_flow:build_flux",
    ),
    FamilyFacts(
        name="flux2",
        label="FLUX.2 [klein]/[dev]",
        pipeline_classes=("Flux2KleinPipeline", "Flux2Pipeline"),
        objective="flow_matching",
        denoiser="transformer",
        fields=FLOW_FIELDS | {"guidance"},
        native_resolution=fixed_resolution(1024),
        resolution_multiple=16,
        tiny_builder="trainer.synthetic.tiny_flux2:build_flux2",
    ),
    FamilyFacts(
        name="z_image",
        label="Z-Image",
        pipeline_classes=("ZImagePipeline",),
        objective="flow_matching",
        denoiser="transformer",
        fields=FLOW_FIELDS,
        native_resolution=fixed_resolution(1024),
        resolution_multiple=16,
        tiny_builder="trainer.synthetic.tiny_z_image:build_z_image",
    ),
    FamilyFacts(
        name="qwen_image",
        label="Qwen-Image",
        pipeline_classes=("QwenImagePipeline",),
        objective="flow_matching",
        denoiser="transformer",
        fields=FLOW_FIELDS,
        native_resolution=fixed_resolution(1024),
        resolution_multiple=16,
        tiny_builder="trainer.synthetic.tiny_qwen_image:build_qwen_image",
    ),
    FamilyFacts(
        name="chroma",
        label="Chroma",
        pipeline_classes=("ChromaPipeline",),
        objective="flow_matching",
        denoiser="transformer",
        fields=FLOW_FIELDS,
        native_resolution=vae_sample_size,
        resolution_multiple=16,
        tiny_builder="trainer.synthetic.tiny_chroma:build_chroma",
    ),
]
FAMILIES: dict[FamilyName, FamilyFacts] = {facts.name: facts for facts in _ROWS}
# Every field that some family does not take: the spec leaves them unset (None) unless the family does.
FAMILY_SPECIFIC_FIELDS = frozenset().union(*(facts.fields for facts in FAMILIES.values()))


class UnknownFamilyError(ValueError):
    """The folder is no diffusers pipeline of a family we train."""


def family_of_pipeline(class_name: str) -> FamilyName:
    """The family of a diffusers pipeline class name, as `model_index.json` records it."""
    for facts in FAMILIES.values():
        if class_name in facts.pipeline_classes:
            return facts.name
    known = ", ".join(name for f in FAMILIES.values() for name in f.pipeline_classes)
    raise UnknownFamilyError(f"pipeline class {class_name!r} is not one we train (known: {known})")


def families_taking(field: str) -> str:
    """The labels of the families that take `field`, for documentation: "SD3/SD3.5, FLUX.1"."""
    return ", ".join(facts.label for facts in FAMILIES.values() if field in facts.fields)


def families_of(objective: Objective) -> str:
    """The labels of the families trained with `objective`, for documentation: "SD 1.x/2.x, SDXL"."""
    return ", ".join(facts.label for facts in FAMILIES.values() if facts.objective == objective)


def read_family(model_dir: Path) -> FamilyName:
    """The family of the diffusers folder `model_dir`, from its model_index.json (never from its name)."""
    try:
        index = json.loads((model_dir / MODEL_INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnknownFamilyError(f"{model_dir} has no readable {MODEL_INDEX}: {exc}") from exc
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise UnknownFamilyError(f"{model_dir / MODEL_INDEX} names no pipeline class")
    return family_of_pipeline(index["_class_name"])

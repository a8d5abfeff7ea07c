"""Model families: what differs between SD 1.x/2.x, SDXL, SD3/SD3.5 and FLUX.1, behind one interface.

This module is torch-free (the API reads it): the family names, which pipeline class each is, and the
facts about a family that validating a job needs. `trainer.families.registry.load_family` loads a base
model as its family's `ModelFamily` (trainer/families/base.py), which the engine uses without ever
asking which family it is.

Adding a family (FLUX.2, Qwen-Image, ...) is one module beside these that subclasses `ModelFamily` (or
`FlowFamily` for a flow-matching model), one entry in `FAMILIES` below and in the registry, and a tiny
config in trainer/synthetic/tiny.py so the tests can build one offline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

FamilyName = Literal["sd", "sdxl", "sd3", "flux"]
Objective = Literal["noise_prediction", "flow_matching"]
MODEL_INDEX = "model_index.json"


@dataclass(frozen=True)
class FamilyFacts:
    """What a job spec may ask of a family. `fields` lists the TrainSpec fields that apply only to
    some families and apply to this one; a spec that sets one of the others is refused."""

    name: FamilyName
    pipeline_class: str
    objective: Objective
    denoiser: Literal["unet", "transformer"]
    fields: frozenset[str]


FLOW_FIELDS = frozenset({"weighting_scheme", "logit_mean", "logit_std", "mode_scale"})
FAMILIES: dict[FamilyName, FamilyFacts] = {
    "sd": FamilyFacts("sd", "StableDiffusionPipeline", "noise_prediction", "unet", frozenset()),
    "sdxl": FamilyFacts("sdxl", "StableDiffusionXLPipeline", "noise_prediction", "unet", frozenset()),
    "sd3": FamilyFacts(
        "sd3", "StableDiffusion3Pipeline", "flow_matching", "transformer", FLOW_FIELDS | {"use_t5"}
    ),
    "flux": FamilyFacts("flux", "FluxPipeline", "flow_matching", "transformer", FLOW_FIELDS | {"guidance"}),
}
# Every field that some family does not take: the spec leaves them unset (None) unless the family does.
FAMILY_SPECIFIC_FIELDS = frozenset().union(*(facts.fields for facts in FAMILIES.values()))


class UnknownFamilyError(ValueError):
    """The folder is no diffusers pipeline of a family we train."""


def family_of_pipeline(class_name: str) -> FamilyName:
    """The family of a diffusers pipeline class name, as `model_index.json` records it."""
    for facts in FAMILIES.values():
        if facts.pipeline_class == class_name:
            return facts.name
    known = ", ".join(f.pipeline_class for f in FAMILIES.values())
    raise UnknownFamilyError(f"pipeline class {class_name!r} is not one we train (known: {known})")


def read_family(model_dir: Path) -> FamilyName:
    """The family of the diffusers folder `model_dir`, from its model_index.json (never from its name)."""
    try:
        index = json.loads((model_dir / MODEL_INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnknownFamilyError(f"{model_dir} has no readable {MODEL_INDEX}: {exc}") from exc
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise UnknownFamilyError(f"{model_dir / MODEL_INDEX} names no pipeline class")
    return family_of_pipeline(index["_class_name"])

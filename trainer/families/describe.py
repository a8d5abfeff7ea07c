"""What a base model is, read from its diffusers folder's JSON files alone (torch-free: the API uses it).

A local folder is read where it is; a hub id is read from the Hugging Face cache when a worker or the
operator has downloaded it there (nothing is fetched). A model that cannot be read is described as
unknown, and the worker that loads it checks the job's fields against its family then.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.families import (
    FAMILIES,
    MODEL_INDEX,
    ConfigReader,
    FamilyName,
    UnknownFamilyError,
    read_family,
)


@dataclass(frozen=True)
class ModelDescription:
    family: FamilyName
    prediction_type: str  # epsilon, v_prediction or flow
    native_resolution: int | None


def describe_model(location: str) -> ModelDescription | None:
    """The family, prediction type and native resolution of the model at `location`, or None."""
    folder = model_folder(location)
    if folder is None:
        return None
    try:
        family = read_family(folder)
        return ModelDescription(family, _prediction_type(folder, family), _native_resolution(folder, family))
    except (UnknownFamilyError, OSError, ValueError, KeyError, TypeError):
        return None


def model_folder(location: str) -> Path | None:
    """`location` itself if it is a folder, else the cached snapshot of the hub id it names."""
    if Path(location).is_dir():
        return Path(location)
    if location.count("/") != 1:
        return None
    hub = Path(
        os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub"
    )
    repo = hub.expanduser() / f"models--{location.replace('/', '--')}"
    try:
        snapshot = repo / "snapshots" / (repo / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return snapshot if (snapshot / MODEL_INDEX).is_file() else None


def _reader(folder: Path) -> ConfigReader:
    def read(component: str, name: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((folder / component / name).read_text(encoding="utf-8"))
        return loaded

    return read


def _prediction_type(folder: Path, family: FamilyName) -> str:
    if FAMILIES[family].objective == "flow_matching":
        return "flow"
    return str(_reader(folder)("scheduler", "scheduler_config.json").get("prediction_type", "epsilon"))


def _native_resolution(folder: Path, family: FamilyName) -> int | None:
    facts = FAMILIES[family]
    return facts.native_resolution(_reader(folder), facts.denoiser)

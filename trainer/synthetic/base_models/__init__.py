"""Base models shipped with the project: tiny SD, SDXL and FLUX pipelines pre-trained on the shapes domain
(a shapes-sd3 is not shipped yet: see docs/experiments.md, section 1).

Made by `make base-models` (`python -m trainer pretrain-tiny ... --half`, a few CPU minutes each; see
trainer/synthetic/pretrain.py), weights stored in half precision (diffusers loads them as float32). Each
folder's `pretrain.json` holds the figures measured while it was made. Torch-free: the supervisor reads
this.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
SHIPPED = {"shapes-sd": "sd", "shapes-sdxl": "sdxl", "shapes-flux": "flux"}


def shipped_base_models() -> dict[str, str]:
    """Name -> local diffusers folder of every shipped model present in this installation."""
    return {name: str(FOLDER / name) for name in SHIPPED if (FOLDER / name / "model_index.json").is_file()}

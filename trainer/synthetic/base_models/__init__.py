"""Base models shipped with the project: tiny pipelines pre-trained on the shapes domain, one folder
`shapes-<family>` per family that has one (docs/experiments.md, section 1, says which do).

Made by `make base-models` (`python -m trainer pretrain-tiny ... --half`, a few CPU minutes each; see
trainer/synthetic/pretrain.py), weights stored in half precision (diffusers loads them as float32). Each
folder's `pretrain.json` holds the figures measured while it was made. Torch-free: the supervisor reads
this.
"""

from __future__ import annotations

from pathlib import Path

from trainer.families import FAMILIES, MODEL_INDEX

FOLDER = Path(__file__).resolve().parent
# Every family's shapes base is named shapes-<family>; those whose folder is here are shipped.
SHIPPED = {f"shapes-{name}": name for name in FAMILIES if (FOLDER / f"shapes-{name}" / MODEL_INDEX).is_file()}


def shipped_base_models() -> dict[str, str]:
    """Name -> local diffusers folder of every shipped model present in this installation."""
    return {name: str(FOLDER / name) for name in SHIPPED}

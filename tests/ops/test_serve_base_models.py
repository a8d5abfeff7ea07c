"""The base models `mapo serve` offers: tiny random ones, the shipped pre-trained ones, the operator's."""

from __future__ import annotations

from pathlib import Path

from core.settings import Settings
from ops.serve import BUILT_MARKER, TINY_MODELS, offered_base_models
from trainer.synthetic.base_models import FOLDER


def test_the_shipped_pretrained_models_are_offered_beside_the_tiny_ones(tmp_path: Path) -> None:
    for name in TINY_MODELS:  # counted as built, so no time goes into building them
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / BUILT_MARKER).touch()
    operator = {"shapes-sd": "/srv/models/my-own", "sdxl": "stabilityai/stable-diffusion-xl-base-1.0"}

    offered = offered_base_models(Settings(data_dir=tmp_path, base_models=operator))

    assert offered["shapes-sdxl"] == str(FOLDER / "shapes-sdxl")
    assert (Path(offered["shapes-sdxl"]) / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert offered["shapes-sd"] == "/srv/models/my-own"  # the operator's choice wins on a clash
    assert offered["tiny-sd"] == str(tmp_path / "models" / "tiny-sd")
    assert offered["sdxl"] == operator["sdxl"]

"""Pre-training a tiny pipeline on the shapes domain: it learns, and the result loads like any base model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from trainer.cli import main
from trainer.families.base import Conditioning
from trainer.families.registry import load_family
from trainer.synthetic.pretrain import (
    REPORT_FILE,
    PretrainConfig,
    pretrain_tiny,
    short_text_stage,
    train_denoiser,
)
from trainer.synthetic.shape_autoencoder import target_latents
from trainer.synthetic.shapes import COLOURS, Drawing, random_drawing, render, shape_rgb

SHORT = PretrainConfig(autoencoder_batch_size=8, autoencoder_steps=40, batch_size=8, denoiser_steps=40)


def test_target_latents_are_cell_means_of_colour_and_chroma() -> None:
    image = render(Drawing("square", COLOURS["green"], "white", centre=(0.25, 0.25), radius=0.25), 64)
    pixels = (
        torch.tensor(list(image.getdata()), dtype=torch.float32).reshape(1, 64, 64, 3).permute(0, 3, 1, 2)
    )
    latents = target_latents(pixels / 127.5 - 1.0, 8)

    assert latents.shape == (1, 4, 8, 8)
    green = torch.tensor(shape_rgb(COLOURS["green"]), dtype=torch.float32) / 127.5 - 1.0
    inside, outside = latents[0, :, 1, 1], latents[0, :, 6, 6]  # a cell within the square, one far away
    assert torch.allclose(inside[:3], green) and torch.allclose(
        outside[:3], torch.full((3,), 235 / 127.5 - 1)
    )
    assert inside[3] > 0.5 and outside[3] == -1.0  # saturated shape, achromatic background


@pytest.mark.slow
def test_a_short_pretraining_lowers_held_out_errors_and_loads_as_a_base_model(tmp_path: Path) -> None:
    report = pretrain_tiny("sd", tmp_path / "shapes-sd", SHORT, on_progress=lambda *progress: None)

    assert report.reconstruction_error[1] < report.reconstruction_error[0]
    assert report.denoising_loss[1] < report.denoising_loss[0]
    assert set(report.caption_accuracy_after) == {"kind", "colour", "background", "all"}
    assert json.loads((tmp_path / "shapes-sd" / REPORT_FILE).read_text())["denoising_loss"] == list(
        report.denoising_loss
    )
    model = load_family(str(tmp_path / "shapes-sd"), device=torch.device("cpu"), weight_dtype=torch.float32)
    assert model.name == "sd" and model.native_resolution == 64


@pytest.mark.slow
def test_pretrain_tiny_command_writes_an_sdxl_model_and_prints_its_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shapes-sdxl"
    steps = ["--autoencoder-steps", "2", "--denoiser-steps", "2"]
    assert main(["pretrain-tiny", "--family", "sdxl", "--out", str(out), *steps]) == 0

    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["out"] == str(out) and printed["family"] == "sdxl"
    assert load_family(str(out), device=torch.device("cpu"), weight_dtype=torch.float32).name == "sdxl"


def test_a_padded_text_family_pretrains_short_then_adapts_at_its_pipeline_s_length(tiny_flux: Path) -> None:
    model = load_family(str(tiny_flux), device=torch.device("cpu"), weight_dtype=torch.float32)
    lengths: dict[str, set[int]] = {}
    encode = model.encode_prompts

    def recording_encode(prompts: list[str]) -> Conditioning:
        conditioning = encode(prompts)
        lengths.setdefault(stage, set()).add(conditioning["prompt_embeds"].shape[1])
        return conditioning

    model.encode_prompts = recording_encode  # type: ignore[method-assign]
    config = PretrainConfig(batch_size=2, denoiser_steps=1, adapt_steps=1, adapt_batch_size=2, resolution=32)
    stage = "denoiser"
    short_text_stage(model, config, lambda *progress: None)
    stage = "adapt"
    train_denoiser(model, config, lambda *progress: None, stage=stage, steps=1, lr=1e-4)

    assert lengths == {"denoiser": {config.short_text_length}, "adapt": {512}}
    assert model.text_length == model.default_text_length == 512, "FluxPipeline's max_sequence_length"


@pytest.mark.slow
def test_a_flux2_pretraining_trains_its_vae_and_calibrates_the_batch_norm_its_pipelines_normalise_with(
    tmp_path: Path,
) -> None:
    config = PretrainConfig(
        autoencoder_batch_size=8,
        autoencoder_steps=40,
        batch_size=4,
        denoiser_steps=4,
        adapt_steps=1,
        adapt_batch_size=2,
    )
    report = pretrain_tiny("flux2", tmp_path / "shapes-flux2", config, on_progress=lambda *progress: None)

    assert report.reconstruction_error[1] < report.reconstruction_error[0]
    model = load_family(
        str(tmp_path / "shapes-flux2"), device=torch.device("cpu"), weight_dtype=torch.float32
    )
    rng = random.Random(1)
    drawings = [random_drawing(rng) for _ in range(32)]
    pixels = torch.stack(
        [
            torch.tensor(list(render(d, 64).getdata()), dtype=torch.float32).reshape(64, 64, 3)
            for d in drawings
        ]
    ).permute(0, 3, 1, 2)
    latents = model.to_latents(model.encode_pixels(pixels / 127.5 - 1.0)[0])
    assert latents.shape[1] == 128 and abs(float(latents.mean())) < 0.3
    assert 0.7 < float(latents.std()) < 1.4, "normalised by the measured batch-norm statistics"

"""The adapter a job produces loads where users load adapters: diffusers, and kohya-keyed tools."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

from tests.support.specs import tiny_spec
from trainer.export import from_kohya, to_kohya
from trainer.loop import train


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def trained(request: pytest.FixtureRequest, color_pairs: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    base = request.getfixturevalue(f"tiny_{request.param}")
    out = tmp_path_factory.mktemp(f"trained-{request.param}")
    result = train(tiny_spec(base, lora_rank=4, lora_alpha=2.0), color_pairs, out, on_event=lambda e: None)
    return base, result


def _render(pipeline: DiffusionPipeline) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    images = pipeline(
        "a red circle", num_inference_steps=2, height=32, width=32, generator=generator, output_type="np"
    ).images
    return np.asarray(images)


def test_adapter_loads_with_load_lora_weights_and_changes_the_output(trained) -> None:  # type: ignore[no-untyped-def]
    base, result = trained
    pipeline = DiffusionPipeline.from_pretrained(base)
    before = _render(pipeline)
    pipeline.load_lora_weights(str(result.adapter_path.parent))
    after = _render(pipeline)
    assert np.abs(after - before).max() > 1e-4


def test_kohya_file_loads_to_the_same_images_as_the_diffusers_file(trained) -> None:  # type: ignore[no-untyped-def]
    base, result = trained
    outputs = []
    for path in (result.adapter_path, result.kohya_path):
        pipeline = DiffusionPipeline.from_pretrained(base)
        pipeline.load_lora_weights(str(path.parent), weight_name=path.name)
        outputs.append(_render(pipeline))
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)


def test_kohya_export_round_trips_exactly(trained) -> None:  # type: ignore[no-untyped-def]
    _, result = trained
    kohya = load_file(str(result.kohya_path))
    assert all(k.startswith("lora_unet_") for k in kohya)
    assert {k.rsplit(".", 2)[-2] if k.endswith("weight") else "alpha" for k in kohya} == {
        "lora_down",
        "lora_up",
        "alpha",
    }
    diffusers_state = {k.removeprefix("unet."): v for k, v in load_file(str(result.adapter_path)).items()}
    modules = sorted(
        {k.removesuffix(".lora.down.weight").removesuffix(".lora.up.weight") for k in diffusers_state}
    )
    back, alpha = from_kohya(kohya, modules)
    assert alpha == 2.0
    assert back.keys() == diffusers_state.keys()
    assert all(torch.equal(back[k], diffusers_state[k]) for k in back)


def test_to_kohya_names_modules_with_underscores() -> None:
    state = {
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0.lora.down.weight": torch.ones(
            2, 3
        )
    }
    out = to_kohya(state, alpha=4.0)
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0"
    assert set(out) == {name + ".lora_down.weight", name + ".alpha"}
    assert out[name + ".alpha"].item() == 4.0

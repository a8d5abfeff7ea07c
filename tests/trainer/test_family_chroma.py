"""Chroma against diffusers' own ChromaPipeline on the tiny offline model: text conditioning, one
denoising step (true CFG at the default guidance 5.0), the sigma schedule, the decode path, validation
images, and the adapter files (diffusers and ComfyUI)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

from tests.support.adapters import adapter_files
from trainer.families.base import ImageGeometry
from trainer.families.chroma import ChromaFamily, joint_mask
from trainer.families.flux import image_ids, pack_latents, unpack_latents
from trainer.families.registry import load_family
from trainer.sampling import Renderer

CPU = torch.device("cpu")
PROMPTS = ["a red circle on a blue background", "", "cat " * 40]  # short, empty, longer than 32 tokens
SIZE = 32  # pixels: 4x4 latents, 4 packed tokens

TEXT_LENGTH = 512  # ChromaPipeline's default max_sequence_length


@pytest.fixture(scope="module")
def folder(tiny_models: Callable[[str], Path]) -> Path:
    return tiny_models("chroma")


@pytest.fixture(scope="module")
def family(folder: Path) -> ChromaFamily:
    loaded = load_family(str(folder), device=CPU, weight_dtype=torch.float32)
    assert isinstance(loaded, ChromaFamily)
    return loaded


@pytest.fixture(scope="module")
def pipeline(folder: Path) -> Any:
    pipe = DiffusionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()  # as inside the pipeline's __call__ (encode_prompt alone would run T5 with gradients)
def test_prompts_are_encoded_as_the_pipeline_encodes_them_by_default(
    family: ChromaFamily, pipeline: Any
) -> None:
    ours = family.encode_prompts(PROMPTS)
    embeds, text_ids, mask, *_ = pipeline.encode_prompt(PROMPTS, do_classifier_free_guidance=False)
    # The pipeline's default length, though the tiny tokenizer's model_max_length is 32.
    assert pipeline.tokenizer.model_max_length < TEXT_LENGTH == embeds.shape[1]
    assert torch.equal(ours["prompt_embeds"], embeds)
    assert ours["mask"].dtype == mask.dtype == torch.float32
    assert torch.equal(ours["mask"], mask)
    assert torch.equal(text_ids, torch.zeros(TEXT_LENGTH, 3))
    real = pipeline.tokenizer(PROMPTS, padding="max_length", max_length=TEXT_LENGTH).attention_mask
    # Real tokens plus the first padding one; "" is EOS + one pad.
    assert ours["mask"].sum(1).tolist() == [sum(r) + 1 for r in real]
    assert ours["mask"][1].sum() == 2


@torch.no_grad()
def test_the_unconditional_branch_is_the_pipeline_s_negative_prompt(
    family: ChromaFamily, pipeline: Any
) -> None:
    *_, negative, _, negative_mask = pipeline.encode_prompt(PROMPTS[:2], do_classifier_free_guidance=True)
    uncond = family.unconditional(2)
    assert torch.equal(uncond["prompt_embeds"], negative)
    assert torch.equal(uncond["mask"], negative_mask)


@torch.no_grad()
def test_one_denoising_step_equals_the_pipeline_s_default_step(family: ChromaFamily, pipeline: Any) -> None:
    """Latents before and after step 1 of a default call (guidance_scale 5.0 = true CFG against "", 512
    tokens), then the same step rebuilt with family.predict and the Euler update."""
    captured: dict[int, torch.Tensor] = {}

    def grab(_pipe: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        captured[step] = kwargs["latents"].clone()
        return {}

    generator = torch.Generator().manual_seed(0)
    kwargs = {"height": SIZE, "width": SIZE, "num_inference_steps": 3, "output_type": "latent"}
    pipeline(prompt=PROMPTS[0], generator=generator, callback_on_step_end=grab, **kwargs)
    side = SIZE // family.vae_scale_factor
    x = unpack_latents(captured[0], side, side)
    sigma, sigma_next = pipeline.scheduler.sigmas[1], pipeline.scheduler.sigmas[2]
    geometry = ImageGeometry.uncropped(1, SIZE)
    levels = sigma.expand(1)
    v_pos = family.predict(family.denoiser, x, levels, family.encode_prompts(PROMPTS[:1]), geometry)
    v_neg = family.predict(family.denoiser, x, levels, family.unconditional(1), geometry)
    ours = x + (sigma_next - sigma) * (v_neg + 5.0 * (v_pos - v_neg))
    torch.testing.assert_close(ours, unpack_latents(captured[1], side, side), atol=1e-5, rtol=1e-5)


def test_training_sigmas_carry_the_sampling_schedule_s_shift(family: ChromaFamily, pipeline: Any) -> None:
    """The pipeline's 4-step schedule reads the unshifted sigmas 1, .75, .5, .25 and shifts them with
    FLUX's mu at this size; training draws u and shifts the same way, so u = 0, .25, .5, .75 must give
    the same sigmas."""
    pipeline(prompt="x", height=SIZE, width=SIZE, num_inference_steps=4, output_type="latent")
    side = SIZE // family.vae_scale_factor
    latents = torch.zeros(2, family.latent_channels, side, side)
    sigmas = family.sigmas(torch.tensor([0.0, 0.25, 0.5, 0.75]), latents)  # draw_levels' u -> sigma
    torch.testing.assert_close(sigmas, pipeline.scheduler.sigmas[:-1], atol=1e-6, rtol=1e-6)


@torch.no_grad()
def test_latents_decode_as_the_pipeline_decodes_them(family: ChromaFamily, pipeline: Any) -> None:
    def call(output_type: str) -> torch.Tensor:
        generator = torch.Generator().manual_seed(1)
        kwargs = {"height": SIZE, "width": SIZE, "num_inference_steps": 2, "output_type": output_type}
        images: torch.Tensor = pipeline(prompt=PROMPTS[0], generator=generator, **kwargs).images
        return images

    latents = family.pipeline_latents(call("latent"), SIZE)
    assert latents.shape == (1, 16, SIZE // 8, SIZE // 8)
    torch.testing.assert_close(family.to_latents(family.from_latents(latents)), latents)
    pixels = (family.decode_latents(latents) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(pixels, call("pt"), atol=1e-5, rtol=1e-5)


def test_validation_images_are_the_pipeline_s_default_images(family: ChromaFamily, folder: Path) -> None:
    renderer = Renderer.build(family, family.denoiser)
    ours = renderer.image(PROMPTS[0], seed=3, resolution=SIZE, num_inference_steps=2, guidance_scale=5.0)
    plain = DiffusionPipeline.from_pretrained(str(folder))
    plain.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(3)
    theirs = plain(prompt=PROMPTS[0], height=SIZE, width=SIZE, num_inference_steps=2, generator=generator)
    difference = np.abs(np.asarray(ours, np.int16) - np.asarray(theirs.images[0], np.int16))
    assert difference.max() <= 1  # uint8 rounding of float32 pixels that differ by ~1e-7


def _draw(folder: Path, adapter: Path | None) -> torch.Tensor:
    pipe = DiffusionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    if adapter is not None:
        pipe.load_lora_weights(str(adapter.parent), weight_name=adapter.name)
    generator = torch.Generator().manual_seed(0)
    kwargs = {"height": SIZE, "width": SIZE, "num_inference_steps": 2, "output_type": "pt"}
    images: torch.Tensor = pipe(prompt=PROMPTS[0], generator=generator, **kwargs).images
    return images


def test_the_comfyui_file_loads_in_diffusers_to_the_same_images_as_the_diffusers_file(
    folder: Path, tmp_path: Path
) -> None:
    files = adapter_files(folder, tmp_path)
    diffusers_file, kohya_file = files.diffusers, files.comfyui
    assert all(key.startswith("transformer.") for key in load_file(str(diffusers_file)))
    assert all(key.startswith("lora_transformer_") for key in load_file(str(kohya_file)))
    with_adapter = _draw(folder, diffusers_file)
    assert not torch.allclose(with_adapter, _draw(folder, None))
    torch.testing.assert_close(_draw(folder, kohya_file), with_adapter)


def _masked_call(family: ChromaFamily) -> dict[str, Any]:
    torch.manual_seed(0)
    x = torch.randn(1, 16, 4, 4)
    cond = family.encode_prompts(PROMPTS[:1])
    return {
        "hidden_states": pack_latents(x),
        "timestep": torch.tensor([0.7]),
        "encoder_hidden_states": cond["prompt_embeds"],
        "txt_ids": torch.zeros(TEXT_LENGTH, 3),
        "img_ids": image_ids(2, 2, device=CPU, dtype=torch.float32),
        "attention_mask": joint_mask(cond["mask"], 4),
        "return_dict": False,
    }


def test_gradient_checkpointing_drops_the_mask_in_diffusers_single_blocks(family: ChromaFamily) -> None:
    """Why the family checkpoints its blocks itself: diffusers 0.42 calls the single-stream blocks
    without the attention mask under its own switch. If this fails, diffusers fixed it."""
    denoiser, arguments = family.denoiser, _masked_call(family)
    with torch.no_grad():
        plain = denoiser(**arguments)[0]
    denoiser.enable_gradient_checkpointing()
    try:
        with torch.enable_grad():
            checkpointed = denoiser(**arguments)[0].detach()
    finally:
        denoiser.disable_gradient_checkpointing()
    assert (checkpointed - plain).abs().max() > 1e-4


def test_the_family_s_gradient_checkpointing_keeps_the_mask_and_the_gradients(folder: Path) -> None:
    def output_and_grads(checkpointing: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model = load_family(str(folder), device=CPU, weight_dtype=torch.float32)
        assert isinstance(model, ChromaFamily)
        params = list(model.denoiser.single_transformer_blocks[0].parameters())
        for param in params:
            param.requires_grad_(True)
        if checkpointing:
            model.enable_gradient_checkpointing(model.denoiser)
        out = model.denoiser(**_masked_call(model))[0]
        out.square().mean().backward()
        return out.detach(), [param.grad for param in params if param.grad is not None]

    plain, plain_grads = output_and_grads(False)
    checkpointed, checkpointed_grads = output_and_grads(True)
    torch.testing.assert_close(checkpointed, plain)
    assert len(checkpointed_grads) == len(plain_grads) > 0
    for ours, theirs in zip(checkpointed_grads, plain_grads, strict=True):
        torch.testing.assert_close(ours, theirs)

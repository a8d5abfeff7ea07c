"""Z-Image against diffusers' own ZImagePipeline on the tiny offline model: text conditioning (and the
unconditional branch), the denoising steps of a default call (CFG at guidance 5.0), the training sigmas,
the decode path, and the ComfyUI adapter file read back through diffusers' Z-Image converter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from safetensors.torch import load_file

from tests.support.adapters import adapter_files
from trainer.families.base import Conditioning, ImageGeometry, attention_processors
from trainer.families.registry import load_family
from trainer.families.z_image import MAX_SEQUENCE_LENGTH, ZImageFamily, unpad_captions

CPU = torch.device("cpu")
# Short, empty, and longer than 512 tokens (truncated, template included).
PROMPTS = ["a red circle on a blue background", "", "a big watercolor painting of a cat " * 120]
SIZE = 32  # pixels: 4x4 latents, 2x2 image tokens
# What scheduler.step saw and returned: (model_output, t, latents in, latents out).
Step = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def folder(tiny_models: Callable[[str], Path]) -> Path:
    return tiny_models("z_image")


@pytest.fixture(scope="module")
def family(folder: Path) -> ZImageFamily:
    loaded = load_family(str(folder), device=CPU, weight_dtype=torch.float32)
    assert isinstance(loaded, ZImageFamily)
    return loaded


@pytest.fixture(scope="module")
def pipeline(folder: Path) -> Any:
    pipe = DiffusionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assert_same_captions(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> None:
    assert [tuple(t.shape) for t in ours] == [tuple(t.shape) for t in theirs]
    for mine, reference in zip(ours, theirs, strict=True):
        assert torch.equal(mine, reference)


@torch.no_grad()  # as inside the pipeline's __call__
def test_prompts_are_encoded_as_the_pipeline_encodes_them_by_default(
    family: ZImageFamily, pipeline: Any
) -> None:
    ours = family.encode_prompts(PROMPTS)
    positive, negative = pipeline.encode_prompt(list(PROMPTS), device=CPU, do_classifier_free_guidance=True)
    width = pipeline.text_encoder.config.hidden_size
    assert ours["prompt_embeds"].shape == (3, MAX_SEQUENCE_LENGTH, width)
    assert ours["prompt_mask"].shape == (3, MAX_SEQUENCE_LENGTH)
    assert_same_captions(unpad_captions(ours["prompt_embeds"], ours["prompt_mask"]), positive)
    assert len(positive[2]) == MAX_SEQUENCE_LENGTH  # the long prompt is cut at 512 tokens
    assert 5 < len(positive[1]) < 20  # "" is the chat template's tokens alone
    uncond = family.unconditional(3)
    assert_same_captions(unpad_captions(uncond["prompt_embeds"], uncond["prompt_mask"]), negative)
    # Padding rows are zeros, and the mask survives a cast to a half dtype.
    assert ours["prompt_embeds"][ours["prompt_mask"] == 0].eq(0).all()
    halved = family.encode_prompts(PROMPTS).to(CPU, torch.bfloat16)
    kept = unpad_captions(halved["prompt_embeds"], halved["prompt_mask"])
    assert [len(t) for t in kept] == [len(t) for t in positive]


def capture_steps(family: ZImageFamily, steps: int) -> tuple[torch.Tensor, list[Step]]:
    """Run a default call (guidance 5.0, 512 tokens) sharing `family`'s modules; returns the final
    latents and, per step, (model_output, t, latents in, latents out) as the scheduler saw them."""
    shared = DiffusionPipeline.from_pretrained(family.source, **family.pipeline_components(family.denoiser))
    shared.set_progress_bar_config(disable=True)
    captured: list[Step] = []
    real_step = shared.scheduler.step

    def spy(model_output: torch.Tensor, t: torch.Tensor, sample: torch.Tensor, **kwargs: Any) -> Any:
        result = real_step(model_output, t, sample, **kwargs)
        captured.append((model_output.clone(), t.clone(), sample.clone(), result[0].clone()))
        return result

    shared.scheduler.step = spy
    final = shared(
        prompt=PROMPTS[0],
        height=SIZE,
        width=SIZE,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    ).images
    return final, captured


@torch.no_grad()
def test_every_denoising_step_equals_the_pipeline_s_default_step(family: ZImageFamily) -> None:
    """Each step of a 3-step default call rebuilt with family.predict: the pipeline's noise_pred is
    pos + 5 (pos - neg) of our predictions (already negated), and its Euler update follows."""
    steps, guidance = 3, 5.0
    final, captured = capture_steps(family, steps)
    assert len(captured) == steps
    pair = Conditioning.cat([family.encode_prompts(PROMPTS[:1]), family.unconditional(1)])
    geometry = ImageGeometry.uncropped(1, SIZE)
    sigmas = static_shift(torch.linspace(1.0, 1.0 / steps, steps), family)
    latents = captured[0][2]
    assert latents.shape == (1, 16, SIZE // 8, SIZE // 8)
    for i, (noise_pred, t, sample, after) in enumerate(captured):
        torch.testing.assert_close(sample, latents, rtol=0, atol=1e-6)
        sigma = sigmas[i : i + 1]
        assert torch.equal(t.reshape(1), sigma * 1000)  # the static shift, no mu
        assert torch.equal(family.model_timestep(sigma), (1000 - t.reshape(1)) / 1000)
        # One batch [positive; negative], as the pipeline runs them (caption lengths differ: a mask).
        both = family.predict(family.denoiser, sample.repeat(2, 1, 1, 1), sigma.repeat(2), pair, geometry)
        positive, negative = both.chunk(2)
        torch.testing.assert_close(positive + guidance * (positive - negative), noise_pred, rtol=0, atol=1e-6)
        following = sigmas[i + 1] if i + 1 < steps else torch.tensor(0.0)
        latents = sample + (following - sigma) * noise_pred
        torch.testing.assert_close(latents, after, rtol=0, atol=1e-6)
    torch.testing.assert_close(latents, final, rtol=0, atol=1e-6)


@torch.no_grad()
def test_a_batch_of_different_captions_predicts_as_one_at_a_time(family: ZImageFamily) -> None:
    cond = family.encode_prompts(PROMPTS)
    noisy = torch.randn(3, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    levels = torch.tensor([0.2, 0.5, 0.9])
    geometry = ImageGeometry.uncropped(3, SIZE)
    batched = family.predict(family.denoiser, noisy, levels, cond, geometry)
    alone = [
        family.predict(family.denoiser, noisy[i : i + 1], levels[i : i + 1], cond.select(i), geometry)
        for i in range(3)
    ]
    torch.testing.assert_close(batched, torch.cat(alone), rtol=1e-5, atol=1e-5)


def static_shift(sigmas: torch.Tensor, family: ZImageFamily) -> torch.Tensor:
    shift = float(family.scheduler.config.shift)
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def test_training_sigmas_are_the_scheduler_s_statically_shifted_ones(family: ZImageFamily) -> None:
    config = family.scheduler.config
    assert config.use_dynamic_shifting is False and config.shift == 3.0  # Z-Image-Turbo's
    fresh = FlowMatchEulerDiscreteScheduler.from_config(config)  # its training sigmas, index 0 = 1.0
    u = (torch.arange(1000) + 0.5) / 1000  # the middle of each index's interval
    for side in (4, 128):  # the shift does not depend on the image's size
        latents = torch.zeros(1, 16, side, side)
        torch.testing.assert_close(family.sigmas(u, latents), fresh.sigmas[:1000], rtol=0, atol=1e-6)


@torch.no_grad()
def test_latents_decode_as_the_pipeline_decodes_them(family: ZImageFamily, pipeline: Any) -> None:
    kwargs = {"prompt": "a red circle", "height": SIZE, "width": SIZE, "num_inference_steps": 2}
    drawn = pipeline(generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs).images
    latents = pipeline(generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs).images
    pixels = family.decode_latents(family.pipeline_latents(latents, SIZE))
    ours = pipeline.image_processor.postprocess(pixels, output_type="pt")
    torch.testing.assert_close(ours, drawn, rtol=0, atol=1e-6)
    # diffusers' Z-Image script trains on (mode - shift_factor) * scaling_factor.
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2)) * 2 - 1
    mean, _ = family.encode_pixels(images)
    vae = pipeline.vae.config
    expected = (pipeline.vae.encode(images).latent_dist.mode() - vae.shift_factor) * vae.scaling_factor
    torch.testing.assert_close(family.to_latents(mean), expected)
    torch.testing.assert_close(family.from_latents(family.to_latents(mean)), mean)


def draw(folder: Path, adapter: Path | None) -> torch.Tensor:
    pipe = DiffusionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    if adapter is not None:
        pipe.load_lora_weights(str(adapter.parent), weight_name=adapter.name)
    generator = torch.Generator().manual_seed(0)
    images: torch.Tensor = pipe(
        prompt="a red circle",
        height=SIZE,
        width=SIZE,
        num_inference_steps=2,
        output_type="pt",
        generator=generator,
    ).images
    return images


@pytest.mark.parametrize(
    "targets",
    [["to_q", "to_k", "to_v", "to_out.0"], ["to_q", "to_v", "w1", "w2"]],
    ids=["default", "partial-qkv-and-mlp"],
)
def test_the_comfyui_file_converts_in_diffusers_to_identical_images(
    folder: Path, tmp_path: Path, targets: list[str]
) -> None:
    files = adapter_files(folder, tmp_path / "adapter", targets=targets)
    adapter, comfy = files.diffusers, files.comfyui
    keys = load_file(str(comfy))
    assert all(key.startswith("diffusion_model.") for key in keys)
    assert not any(".to_q." in key or ".to_out." in key for key in keys)
    qkv = "diffusion_model.layers.0.attention.qkv"
    assert keys[f"{qkv}.lora.down.weight"].shape[0] == 4 * sum(t in targets for t in ("to_q", "to_k", "to_v"))
    assert float(keys[f"{qkv}.alpha"]) / keys[f"{qkv}.lora.down.weight"].shape[0] == 2.0 / 4
    with_adapter = draw(folder, adapter)
    assert not torch.allclose(with_adapter, draw(folder, None))
    torch.testing.assert_close(draw(folder, comfy), with_adapter, rtol=1e-5, atol=1e-5)


def test_the_adapter_targets_the_attention_of_every_block(family: ZImageFamily, tmp_path: Path) -> None:
    adapter = adapter_files(Path(family.source), tmp_path).diffusers
    modules = {key.removeprefix("transformer.").rsplit(".lora_", 1)[0] for key in load_file(str(adapter))}
    config = family.denoiser.config
    blocks = config.n_layers + 2 * config.n_refiner_layers  # main layers, noise and context refiners
    assert len(modules) == 4 * blocks
    assert {m.split(".")[0] for m in modules} == {"layers", "noise_refiner", "context_refiner"}


def test_every_block_attends_through_sdpa(family: ZImageFamily) -> None:
    """The engine's SDPA check, over the processors the model itself does not list (no AttentionMixin)."""
    processors = attention_processors(family.denoiser)
    config = family.denoiser.config
    assert len(processors) == config.n_layers + 2 * config.n_refiner_layers
    assert family.non_sdpa_processors(family.denoiser) == []
    # dispatch_attention_fn's default backend (None: torch's scaled_dot_product_attention).
    assert all(getattr(p, "_attention_backend", None) is None for p in processors.values())

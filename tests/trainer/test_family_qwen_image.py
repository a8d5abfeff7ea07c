"""Qwen-Image against diffusers' own QwenImagePipeline on the tiny model: what training feeds the
transformer is what the pipeline feeds it at sampling time, with the pipeline's defaults."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, QwenImageImg2ImgPipeline
from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift
from safetensors.torch import load_file

from tests.support.adapters import adapter_files
from trainer.families.base import ImageGeometry
from trainer.families.qwen_image import (
    MAX_SEQUENCE_LENGTH,
    PROMPT_TEMPLATE,
    TEMPLATE_DROP,
    QwenImageFamily,
    pipeline_text,
)
from trainer.families.registry import load_family
from trainer.lora import attach_lora
from trainer.sampling import Renderer

CPU = torch.device("cpu")
PROMPTS = ["a red circle", "a small blue square on a green background"]  # unequal lengths: padded


@pytest.fixture(scope="module")
def folder(tiny_models: Callable[[str], Path]) -> Path:
    return tiny_models("qwen_image")


@pytest.fixture(scope="module")
def family(folder: Path) -> QwenImageFamily:
    loaded = load_family(str(folder), device=CPU, weight_dtype=torch.float32)
    assert isinstance(loaded, QwenImageFamily)
    return loaded


@pytest.fixture(scope="module")
def pipe(folder: Path) -> Any:
    pipeline = DiffusionPipeline.from_pretrained(str(folder))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_the_template_and_text_length_are_the_pipeline_s(pipe: Any) -> None:
    assert pipe.prompt_template_encode == PROMPT_TEMPLATE
    assert pipe.prompt_template_encode_start_idx == TEMPLATE_DROP
    assert (
        inspect.signature(type(pipe).__call__).parameters["max_sequence_length"].default
        == MAX_SEQUENCE_LENGTH
    )
    # The tiny tokenizer splits the template as the real one does: the 34 dropped tokens are exactly the
    # text before the prompt, so the kept ones are the prompt and the template's 5-token tail.
    prefix, suffix = PROMPT_TEMPLATE.split("{}")
    ids = pipe.tokenizer(PROMPT_TEMPLATE.format("a red circle")).input_ids
    assert pipe.tokenizer.decode(ids[:TEMPLATE_DROP]) == prefix
    assert pipe.tokenizer.decode(ids[TEMPLATE_DROP:]) == "a red circle" + suffix
    assert len(pipe.tokenizer(suffix).input_ids) == 5


@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["one", "two-padded"])
def test_prompts_encode_to_what_the_pipeline_gives_the_transformer(
    family: QwenImageFamily, pipe: Any, prompts: list[str]
) -> None:
    conditioning = family.encode_prompts(prompts)
    embeds, mask = conditioning["prompt_embeds"], conditioning["prompt_mask"]
    assert embeds.shape[:2] == mask.shape == (len(prompts), MAX_SEQUENCE_LENGTH), "fixed shape: caches"
    theirs, their_mask = pipe.encode_prompt(prompts, device=CPU, max_sequence_length=MAX_SEQUENCE_LENGTH)
    ours, our_mask = pipeline_text(embeds, mask)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert (our_mask is None) == (their_mask is None) == (len(prompts) == 1)
    if their_mask is not None:
        assert our_mask is not None and torch.equal(our_mask, their_mask)
    assert embeds[:, ours.shape[1] :].eq(0).all() and mask[:, ours.shape[1] :].eq(0).all()


def _first_step(pipe: Any, prompts: list[str], packed: torch.Tensor) -> torch.Tensor:
    """The pipeline's latents after its first Euler step from `packed` (3 steps, default arguments)."""
    captured: dict[str, torch.Tensor] = {}

    def grab(_pipe: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if step == 0:
            captured["latents"] = kwargs["latents"].clone()
        return kwargs

    pipe(
        prompt=prompts,
        height=32,
        width=32,
        num_inference_steps=3,
        latents=packed.clone(),
        output_type="latent",
        callback_on_step_end=grab,
    )
    return captured["latents"]


@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["one", "two-padded"])
def test_one_denoising_step_with_predict_is_the_pipeline_s_step(
    family: QwenImageFamily, pipe: Any, prompts: list[str]
) -> None:
    """Same latents, same sigma: predict's velocity (timestep = sigma, unpacked) makes the pipeline's
    Euler step x + (sigma_next - sigma) v, with the text padded to 512 in between."""
    latents = torch.randn(len(prompts), 16, 4, 4, generator=torch.Generator().manual_seed(7))
    packed = pipe._pack_latents(latents, len(prompts), 16, 4, 4)
    after = _first_step(pipe, prompts, packed)
    sigma, sigma_next = pipe.scheduler.sigmas[:2]
    levels = torch.full((len(prompts),), float(sigma))
    with torch.no_grad():
        velocity = family.predict(
            family.denoiser,
            latents,
            levels,
            family.encode_prompts(prompts),
            ImageGeometry.uncropped(len(prompts), 32),
        )
    ours = latents + (sigma_next - sigma) * velocity
    torch.testing.assert_close(ours, pipe._unpack_latents(after, 32, 32, 8)[:, :, 0], rtol=1e-5, atol=1e-6)


def test_training_sigmas_carry_the_sampling_schedule_s_shift_at_the_image_size(
    family: QwenImageFamily,
) -> None:
    config = family.scheduler.config
    assert config.use_dynamic_shifting and config.time_shift_type == "exponential"
    for side in (4, 64, 128):  # 32, 512 and 1024 px
        latents = torch.zeros(1, 16, side, side)
        tokens = (side // 2) ** 2
        mu = calculate_shift(
            tokens, config.base_image_seq_len, config.max_image_seq_len, config.base_shift, config.max_shift
        )
        assert family.shift_mu(latents) == pytest.approx(mu)
        # The scheduler's shift without the terminal stretch of a finite grid (module docstring).
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(config, shift_terminal=None)
        index = torch.tensor([0, 250, 500, 900, 999])
        unshifted = (1000 - index) / 1000
        scheduler.set_timesteps(sigmas=unshifted.tolist(), mu=mu)
        drawn = family.sigmas((index + 0.5) / 1000, latents)
        torch.testing.assert_close(drawn, scheduler.sigmas[:-1], rtol=1e-5, atol=1e-6)


def test_latents_are_normalised_and_decoded_as_the_pipelines_do(family: QwenImageFamily, pipe: Any) -> None:
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mean, std = family.encode_pixels(pixels)
    assert mean.shape == std.shape == (2, 16, 4, 4)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    i2i = QwenImageImg2ImgPipeline(**pipe.components)
    theirs = i2i._encode_vae_image(pixels.unsqueeze(2), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(family.to_latents(mean + std * noise), theirs[:, :, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(family.from_latents(family.to_latents(mean)), mean, rtol=1e-5, atol=1e-5)
    call = {"prompt": "a red circle", "height": 32, "width": 32, "num_inference_steps": 2}
    packed = pipe(**call, generator=torch.Generator().manual_seed(5), output_type="latent").images
    image = pipe(**call, generator=torch.Generator().manual_seed(5), output_type="pt").images
    decoded = family.decode_latents(family.pipeline_latents(packed, 32))
    torch.testing.assert_close((decoded / 2 + 0.5).clamp(0, 1), image, rtol=1e-5, atol=1e-5)


def test_the_tiny_vae_gives_unit_variance_latents_per_channel(family: QwenImageFamily) -> None:
    blocks = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    mean, std = family.encode_pixels(torch.nn.functional.interpolate(blocks, size=(32, 32)))
    latents = family.to_latents(mean).transpose(0, 1).reshape(16, -1)
    assert float(std.max()) < 0.01, "a near-deterministic posterior, as a trained VAE's"
    assert ((latents.std(dim=1) > 0.6) & (latents.std(dim=1) < 1.6)).all()
    assert float(latents.mean(dim=1).abs().max()) < 0.5


def test_validation_images_are_a_plain_default_call(family: QwenImageFamily, pipe: Any) -> None:
    """The pipeline does not guide by default (no negative prompt), and the Renderer draws just that,
    whatever the validation guidance_scale."""
    renderer = Renderer.build(family, family.denoiser)
    call = {"prompt": "a red circle", "height": 32, "width": 32, "num_inference_steps": 2}
    theirs = pipe(**call, generator=torch.Generator().manual_seed(3)).images[0]
    for scale in (1.0, 4.0):
        ours = renderer.image(
            "a red circle", seed=3, resolution=32, num_inference_steps=2, guidance_scale=scale
        )
        assert list(ours.getdata()) == list(theirs.getdata())
    guided = pipe(**call, generator=torch.Generator().manual_seed(3), true_cfg_scale=4.0, negative_prompt=" ")
    assert list(guided.images[0].getdata()) != list(theirs.getdata()), "the documented CFG does guide"


def _draw(folder: Path, adapter: Path | None) -> torch.Tensor:
    pipeline = DiffusionPipeline.from_pretrained(str(folder))
    pipeline.set_progress_bar_config(disable=True)
    if adapter is not None:
        pipeline.load_lora_weights(str(adapter.parent), weight_name=adapter.name)
    images: torch.Tensor = pipeline(
        prompt="a red circle",
        height=32,
        width=32,
        num_inference_steps=2,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images
    return images


def test_the_comfyui_file_loads_in_diffusers_to_the_same_images(folder: Path, tmp_path: Path) -> None:
    files = adapter_files(folder, tmp_path / "adapter")
    family, adapter, comfy = files.family, files.diffusers, files.comfyui
    keys = load_file(str(comfy)).keys()
    modules = {k.removesuffix(".alpha") for k in keys if k.endswith(".alpha")}
    assert all(k.startswith("diffusion_model.transformer_blocks.") for k in keys)
    assert len(modules) == 2 * len(family.default_lora_targets) == len(keys) // 3, "every target, both blocks"
    assert {m + s for m in modules for s in (".lora_down.weight", ".lora_up.weight", ".alpha")} == set(keys)
    with_adapter = _draw(folder, adapter)
    torch.testing.assert_close(_draw(folder, comfy), with_adapter, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(with_adapter, _draw(folder, None), atol=1e-3)


def test_no_lora_goes_where_the_model_discards_the_output_so_every_one_gets_a_gradient(folder: Path) -> None:
    """The last block's text-stream output is thrown away: a LoRA there would get no gradient, and
    data-parallel training waits for every parameter's."""
    model = load_family(str(folder), device=CPU, weight_dtype=torch.float32)
    targets = list(model.default_lora_targets)
    assert "to_add_out" in targets
    discarded = model.discarded_modules()
    attach_lora(model.denoiser, rank=4, alpha=4.0, dropout=0.0, targets=targets, exclude=discarded)
    latents = torch.randn(2, model.latent_channels, 4, 4, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([0.3, 0.8])
    prediction = model.predict(
        model.denoiser, latents, sigmas, model.encode_prompts(PROMPTS), ImageGeometry.uncropped(2, 32)
    )
    prediction.square().mean().backward()
    lora = {n: p for n, p in model.denoiser.named_parameters() if "lora_" in n}
    assert not [n for n in lora if n.startswith(discarded[0] + ".")], "no LoRA on the discarded output"
    assert lora and all(p.grad is not None for p in lora.values())

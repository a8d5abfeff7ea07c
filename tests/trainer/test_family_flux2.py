"""FLUX.2 against diffusers' own pipelines, on the tiny klein (and a dev pipeline made of its parts):
the text conditioning, one denoising step, the latent normalisation and the sampling schedule, and the
ComfyUI (BFL-layout) LoRA file read back by diffusers' converter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import DiffusionPipeline, Flux2Pipeline, Flux2Transformer2DModel
from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu
from safetensors.torch import load_file

from tests.support.adapters import adapter_files
from trainer.families.base import Conditioning, ImageGeometry
from trainer.families.flux2 import REFERENCE_STEPS, Flux2Family, empirical_mu
from trainer.families.registry import load_family

CPU = torch.device("cpu")
PROMPTS = ["a red circle on a blue background", "a small green star"]
SIZE = 32  # pixels: a 2 x 2 token grid


@pytest.fixture(scope="module")
def tiny_flux2(tiny_models: Any) -> Path:
    folder: Path = tiny_models("flux2")
    return folder


@pytest.fixture(scope="module")
def family(tiny_flux2: Path) -> Flux2Family:
    loaded = load_family(str(tiny_flux2), device=CPU, weight_dtype=torch.float32)
    assert isinstance(loaded, Flux2Family) and not loaded.dev
    return loaded


@pytest.fixture(scope="module")
def pipeline(family: Flux2Family) -> Any:
    pipe = DiffusionPipeline.from_pretrained(family.source, **family.pipeline_components(family.denoiser))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_prompts_are_encoded_exactly_as_the_pipeline_encodes_them(family: Flux2Family, pipeline: Any) -> None:
    embeds = family.encode_prompts(PROMPTS)["prompt_embeds"]
    reference, ids = pipeline.encode_prompt(PROMPTS)  # every argument its default: 512 tokens, 9/18/27
    assert embeds.shape == (2, 512, 3 * family.text_encoders[0].config.hidden_size)
    assert torch.equal(embeds, reference)
    assert torch.equal(ids[0, :, 3], torch.arange(512)) and not ids[..., :3].any()


def noise_grid(family: Flux2Family, seed: int = 0) -> torch.Tensor:
    side = SIZE // family.vae_scale_factor
    return torch.randn(2, family.latent_channels, side, side, generator=torch.Generator().manual_seed(seed))


def run_pipeline(pipeline: Any, noise: torch.Tensor, **kwargs: Any) -> tuple[Any, list[torch.Tensor]]:
    """The pipeline's output from `noise` (N, 128, h, w) at SIZE px, and its latent tokens after each step."""
    steps: list[torch.Tensor] = []

    def grab(_pipe: Any, _i: int, _t: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        steps.append(tensors["latents"].clone())
        return {}

    kwargs = {"num_inference_steps": 3, "height": SIZE, "width": SIZE, **kwargs}
    out = pipeline(prompt=PROMPTS, latents=noise.clone(), callback_on_step_end=grab, **kwargs).images
    return out, steps


def tokens_to_grid(tokens: torch.Tensor, side: int) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(len(tokens), -1, side, side)


def test_one_denoising_step_matches_the_pipeline_s_guided_euler_step(
    family: Flux2Family, pipeline: Any
) -> None:
    """Default call: real CFG against "" at 4.0; the step x + (s1 - s0) v with our velocity."""
    noise = noise_grid(family)
    _, steps = run_pipeline(pipeline, noise, output_type="latent")
    sigmas = pipeline.scheduler.sigmas
    geometry = ImageGeometry.uncropped(2, SIZE)
    with torch.no_grad():
        level = sigmas[0].expand(2)
        cond = family.predict(family.denoiser, noise, level, family.encode_prompts(PROMPTS), geometry)
        uncond = family.predict(family.denoiser, noise, level, family.unconditional(2), geometry)
    velocity = uncond + 4.0 * (cond - uncond)
    ours = noise + (sigmas[1] - sigmas[0]) * velocity
    torch.testing.assert_close(ours, tokens_to_grid(steps[0], noise.shape[-1]), atol=1e-5, rtol=1e-5)


def test_training_sigmas_are_the_default_50_step_schedule_at_the_image_s_size(
    family: Flux2Family, pipeline: Any
) -> None:
    for tokens, steps in [(4, 50), (4096, 4), (4096, 50), (5000, 28), (1024, 200)]:
        assert empirical_mu(tokens, steps) == pytest.approx(compute_empirical_mu(tokens, steps), abs=1e-9)
    latents = noise_grid(family)
    tokens = latents.shape[-2] * latents.shape[-1]
    base = torch.linspace(1.0, 1.0 / REFERENCE_STEPS, REFERENCE_STEPS).tolist()  # what __call__ passes
    pipeline.scheduler.set_timesteps(sigmas=base, mu=compute_empirical_mu(tokens, REFERENCE_STEPS))
    # u at the middle of the training table's cells 0, 20, 40, ...: the unshifted 1, 0.98, 0.96, ...
    u = (torch.arange(REFERENCE_STEPS) * 20 + 0.5) / 1000
    torch.testing.assert_close(family.sigmas(u, latents), pipeline.scheduler.sigmas[:-1].float())


def test_latents_round_trip_through_the_pipeline_s_normalisation_and_decoder(
    family: Flux2Family, pipeline: Any
) -> None:
    pixels = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) * 2 - 1
    mean, _ = family.encode_pixels(pixels)
    latents = family.to_latents(mean)
    reference = torch.cat([pipeline._encode_vae_image(pixels[i : i + 1], None) for i in range(2)])
    torch.testing.assert_close(latents, reference)  # patchified and normalised as the pipeline does
    pairs = torch.stack([mean, mean.flip(0)], dim=1)  # (N, 2, 32, H/8, W/8), as evaluation stacks them
    torch.testing.assert_close(family.to_latents(pairs)[:, 0], latents)

    noise = noise_grid(family, seed=1)
    latent_out, steps = run_pipeline(pipeline, noise, output_type="latent")
    final = tokens_to_grid(steps[-1], noise.shape[-1])
    torch.testing.assert_close(family.from_latents(final), latent_out)
    torch.testing.assert_close(family.pipeline_latents(latent_out, SIZE), final, atol=1e-5, rtol=1e-5)
    images, _ = run_pipeline(pipeline, noise, output_type="pt")
    decoded = (family.decode_latents(family.pipeline_latents(latent_out, SIZE)) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(decoded, images, atol=1e-5, rtol=1e-5)


def draw(folder: Path, adapter: Path) -> torch.Tensor:
    pipe = DiffusionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(adapter.parent), weight_name=adapter.name)
    generator = torch.Generator().manual_seed(0)
    images: torch.Tensor = pipe(
        prompt=PROMPTS[0],
        height=SIZE,
        width=SIZE,
        num_inference_steps=2,
        generator=generator,
        output_type="pt",
    ).images
    return images


def test_the_comfyui_file_has_bfl_names_and_draws_what_the_diffusers_file_draws(
    tiny_flux2: Path, tmp_path: Path
) -> None:
    files = adapter_files(tiny_flux2, tmp_path)
    diffusers_file, comfy_file = files.diffusers, files.comfyui
    names = {key.rsplit(".", 2)[0] for key in load_file(str(comfy_file))}
    assert names == {
        *(
            f"diffusion_model.double_blocks.{i}.{m}"
            for i in (0, 1)
            for m in ("img_attn.qkv", "img_attn.proj")
        ),
        *(
            f"diffusion_model.double_blocks.{i}.{m}"
            for i in (0, 1)
            for m in ("txt_attn.qkv", "txt_attn.proj")
        ),
        *(f"diffusion_model.single_blocks.{i}.{m}" for i in (0, 1) for m in ("linear1", "linear2")),
    }
    torch.testing.assert_close(draw(tiny_flux2, comfy_file), draw(tiny_flux2, diffusers_file))


def dev_family(tiny_flux2: Path, tmp_path: Path) -> tuple[Flux2Family, Any]:
    """FLUX.2 [dev]'s pipeline with the tiny klein's parts and a guidance-embedding transformer (no tiny
    Mistral-3 here: prompts are passed as embeddings, so only the text encoder's class is off)."""
    klein = DiffusionPipeline.from_pretrained(str(tiny_flux2))
    config = dict(klein.transformer.config) | {"guidance_embeds": True}
    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel.from_config(config).eval()
    parts = {"vae": klein.vae, "text_encoder": klein.text_encoder, "tokenizer": klein.tokenizer}
    Flux2Pipeline(scheduler=klein.scheduler, transformer=transformer, **parts).save_pretrained(tmp_path)
    pipe = Flux2Pipeline(scheduler=klein.scheduler, transformer=transformer, **parts)
    pipe.set_progress_bar_config(disable=True)
    family = Flux2Family(
        source=str(tmp_path),
        denoiser=transformer,
        vae=klein.vae,
        text_encoders=[klein.text_encoder],
        tokenizers=[klein.tokenizer],
        scheduler=klein.scheduler,
        options={"guidance": 2.5},
    )
    return family, pipe


def test_dev_encodes_with_the_system_message_and_layers_10_20_30(tiny_flux2: Path, tmp_path: Path) -> None:
    """The Qwen tokenizer stands in for Mistral-3's processor: both render the chat template, pad and
    return ids and mask as the pipeline asks."""
    family, pipe = dev_family(tiny_flux2, tmp_path)
    reference, _ = pipe.encode_prompt(PROMPTS)
    assert torch.equal(family.encode_prompts(PROMPTS)["prompt_embeds"], reference)


def test_dev_takes_guidance_as_an_input_and_samples_packed_tokens(tiny_flux2: Path, tmp_path: Path) -> None:
    family, pipe = dev_family(tiny_flux2, tmp_path)
    assert family.dev and family.guidance == 2.5
    embeds = torch.randn(2, 512, pipe.transformer.config.joint_attention_dim, generator=torch.Generator())
    noise = noise_grid(family)
    steps: list[torch.Tensor] = []

    def grab(_pipe: Any, _i: int, _t: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        steps.append(tensors["latents"].clone())
        return {}

    tokens = pipe(
        prompt_embeds=embeds,
        latents=noise.clone(),
        guidance_scale=2.5,
        num_inference_steps=2,
        height=SIZE,
        width=SIZE,
        output_type="latent",
        callback_on_step_end=grab,
    ).images
    side = noise.shape[-1]
    torch.testing.assert_close(family.pipeline_latents(tokens, SIZE), tokens_to_grid(steps[-1], side))
    sigmas = pipe.scheduler.sigmas
    conditioning = Conditioning({"prompt_embeds": embeds})
    with torch.no_grad():
        velocity = family.predict(
            pipe.transformer, noise, sigmas[0].expand(2), conditioning, ImageGeometry.uncropped(2, SIZE)
        )
    ours = noise + (sigmas[1] - sigmas[0]) * velocity
    torch.testing.assert_close(ours, tokens_to_grid(steps[0], side), atol=1e-5, rtol=1e-5)

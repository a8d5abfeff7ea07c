"""Validation images: the spec's prompts rendered from a fixed seed, with the LoRA and without it.

The base model's images (LoRA off) do not change during training, so they are rendered once per run and
reported at step 0; the LoRA's images are rendered at each validation step and at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel

from trainer.events import SampleImage
from trainer.models import DiffusionModel, inference_mode
from trainer.spec import ValidationSpec


def build_pipeline(model: DiffusionModel, unet: UNet2DConditionModel) -> Any:
    """A text-to-image pipeline sharing the loaded modules; only the inference scheduler is read anew."""
    components: dict[str, Any] = {
        "unet": unet,
        "vae": model.vae,
        "text_encoder": model.text_encoders[0],
        "tokenizer": model.tokenizers[0],
    }
    if model.family == "sdxl":
        components |= {"text_encoder_2": model.text_encoders[1], "tokenizer_2": model.tokenizers[1]}
    else:
        components |= {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    pipeline = DiffusionPipeline.from_pretrained(model.source, **components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@torch.no_grad()
def render(
    pipeline: Any,
    validation: ValidationSpec,
    *,
    resolution: int,
    out_dir: Path,
    with_lora: bool,
) -> list[SampleImage]:
    """Render every prompt with its own fixed-seed generator; PNGs go to out_dir/NN.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    unet = pipeline.unet
    if not with_lora:
        unet.disable_adapters()
    try:
        with inference_mode(unet):
            return [
                _render_one(
                    pipeline, validation, index, resolution=resolution, out_dir=out_dir, with_lora=with_lora
                )
                for index in range(len(validation.prompts))
            ]
    finally:
        if not with_lora:
            unet.enable_adapters()


def _render_one(
    pipeline: Any, validation: ValidationSpec, index: int, *, resolution: int, out_dir: Path, with_lora: bool
) -> SampleImage:
    """Prompt `index` from its own generator, seeded `validation.seed + index`, saved as out_dir/NN.png."""
    prompt = validation.prompts[index]
    image = generate_image(
        pipeline,
        prompt,
        seed=validation.seed + index,
        resolution=resolution,
        num_inference_steps=validation.num_inference_steps,
        guidance_scale=validation.guidance_scale,
    )
    path = out_dir / f"{index:02d}.png"
    image.save(path)
    return SampleImage(prompt=prompt, path=str(path), with_lora=with_lora)


@torch.no_grad()
def generate_image(
    pipeline: Any, prompt: str, *, seed: int, resolution: int, num_inference_steps: int, guidance_scale: float
) -> Any:
    """One `resolution`² PIL image of `prompt`, its noise drawn from a CPU generator seeded `seed` (so a
    seed means the same starting noise on any device)."""
    latents = pipeline(
        prompt,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        height=resolution,
        width=resolution,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="latent",
    ).images
    return _decode(pipeline, latents)


def _decode(pipeline: Any, latents: torch.Tensor) -> Any:
    """Decode in float32 whatever the UNet's dtype: the VAE is kept in float32 (SDXL's overflows in fp16),
    and the pipeline would otherwise hand it half-precision latents."""
    vae = pipeline.vae
    pixels = vae.decode(latents.to(vae.device, torch.float32) / vae.config.scaling_factor).sample
    return pipeline.image_processor.postprocess(pixels, output_type="pil")[0]

"""Validation images: the spec's prompts rendered from a fixed seed, with the LoRA and without it.

The base model's images (LoRA off) do not change during training, so they are rendered once per run and
reported at step 0; the LoRA's images are rendered at each validation step and at the end. A Renderer
given `PromptEmbeddings` draws its prompts from those, and its pipeline then needs no text encoder (a
cached job frees them once everything it conditions on is encoded).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

from trainer.encoding import encode_all_prompts
from trainer.events import SampleImage
from trainer.families.base import Conditioning, ModelFamily
from trainer.lora import inference_mode, lora_switched_off
from trainer.spec import ValidationSpec

# Text arguments of a sampling call that embeddings replace (FLUX's true CFG names its negative "").
TEXT_ARGUMENTS = ("negative_prompt",)


@dataclass(frozen=True)
class PromptEmbeddings:
    """Prompts encoded up front, with the negative prompt's conditioning (the family's `unconditional`),
    on the CPU: what a pipeline draws them from once the text encoders are gone."""

    prompts: list[str]
    conditioning: Conditioning  # of `prompts`, in order
    negative: Conditioning  # one row

    @staticmethod
    def encode(family: ModelFamily, prompts: list[str]) -> PromptEmbeddings:
        negative = family.unconditional(1).to(torch.device("cpu"))
        return PromptEmbeddings(list(prompts), encode_all_prompts(family, prompts), negative)

    def of(self, prompts: list[str]) -> Conditioning:
        """The conditioning of `prompts` (each one encoded up front), in their order."""
        missing = [prompt for prompt in prompts if prompt not in self.prompts]
        if missing:
            raise KeyError(f"prompts not encoded before the text encoders were freed: {missing}")
        return Conditioning.cat([self.conditioning.select(self.prompts.index(p)) for p in prompts])


@dataclass
class Renderer:
    """A family's text-to-image pipeline sharing the loaded modules (only the inference scheduler is
    read anew), with `denoiser` (the LoRA-carrying one while training). With `embeddings` it draws the
    prompts from them instead of their text."""

    family: ModelFamily
    pipeline: Any
    embeddings: PromptEmbeddings | None = None

    @staticmethod
    def build(
        family: ModelFamily, denoiser: torch.nn.Module, embeddings: PromptEmbeddings | None = None
    ) -> Renderer:
        pipeline = DiffusionPipeline.from_pretrained(family.source, **family.pipeline_components(denoiser))
        pipeline.set_progress_bar_config(disable=True)
        return Renderer(family, pipeline, embeddings)

    @property
    def denoiser(self) -> Any:
        """The pipeline's UNet or transformer."""
        return self.pipeline.unet if hasattr(self.pipeline, "unet") else self.pipeline.transformer

    @torch.no_grad()
    def image(
        self, prompt: str, *, seed: int, resolution: int, num_inference_steps: int, guidance_scale: float
    ) -> Any:
        """One `resolution`² PIL image of `prompt`, its noise drawn from a CPU generator seeded `seed` (so
        a seed means the same starting noise on any device)."""
        return self.images(
            [prompt],
            seeds=[seed],
            resolution=resolution,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
        )[0]

    @torch.no_grad()
    def images(
        self,
        prompts: list[str],
        *,
        seeds: list[int],
        resolution: int,
        num_inference_steps: int,
        guidance_scale: float,
    ) -> list[Any]:
        """One PIL image per prompt, in one pipeline call; prompt i's noise from a CPU generator seeded
        seeds[i]."""
        latents = self.pipeline(
            num_inference_steps=num_inference_steps,
            height=resolution,
            width=resolution,
            generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
            output_type="latent",
            **self._prompt_arguments(prompts, guidance_scale),
        ).images
        return self._decode(self.family.pipeline_latents(latents, resolution))

    def _prompt_arguments(self, prompts: list[str], guidance_scale: float) -> dict[str, Any]:
        """The prompts (by name: FLUX.2's pipelines take a reference image first) and guidance of a
        call: the texts, or with `embeddings` their conditioning on the denoiser's device."""
        arguments = self.family.sampling_arguments(guidance_scale)
        if self.embeddings is None:
            # A copy: Z-Image's pipeline templates the list it is given in place, the caller's list.
            return {"prompt": list(prompts), **arguments}
        device = next(self.denoiser.parameters()).device
        negative = None
        if self.family.guides_against_negative(guidance_scale):
            negative = self.embeddings.negative.repeat(len(prompts)).to(device)
        conditioning = self.embeddings.of(prompts).to(device)
        plain = {name: value for name, value in arguments.items() if name not in TEXT_ARGUMENTS}
        return plain | self.family.pipeline_embeddings(conditioning, negative)

    def _decode(self, latents: torch.Tensor) -> list[Any]:
        """Decode in float32 whatever the denoiser's dtype: the VAE is kept in float32 (SDXL's overflows
        in fp16), and the pipeline would otherwise hand it half-precision latents."""
        pixels = self.family.decode_latents(latents)
        decoded: list[Any] = self.pipeline.image_processor.postprocess(pixels, output_type="pil")
        return decoded


def load_renderer(source: str, *, device: torch.device, dtype: torch.dtype = torch.float32) -> Renderer:
    """The base model at `source` loaded as its family, ready to draw (benchmarks, tests, the demo)."""
    from trainer.families.registry import load_family

    family = load_family(source, device=device, weight_dtype=dtype)
    return Renderer.build(family, family.denoiser)


@torch.no_grad()
def render(
    renderer: Renderer,
    validation: ValidationSpec,
    *,
    resolution: int,
    out_dir: Path,
    with_lora: bool,
) -> list[SampleImage]:
    """Render every prompt with its own fixed-seed generator; PNGs go to out_dir/NN.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    denoiser = renderer.denoiser
    with inference_mode(denoiser), nullcontext() if with_lora else lora_switched_off(denoiser):
        return [
            _render_one(
                renderer, validation, index, resolution=resolution, out_dir=out_dir, with_lora=with_lora
            )
            for index in range(len(validation.prompts))
        ]


def _render_one(
    renderer: Renderer,
    validation: ValidationSpec,
    index: int,
    *,
    resolution: int,
    out_dir: Path,
    with_lora: bool,
) -> SampleImage:
    """Prompt `index` from its own generator, seeded `validation.seed + index`, saved as out_dir/NN.png."""
    prompt = validation.prompts[index]
    image = renderer.image(
        prompt,
        seed=validation.seed + index,
        resolution=resolution,
        num_inference_steps=validation.num_inference_steps,
        guidance_scale=validation.guidance_scale,
    )
    path = out_dir / f"{index:02d}.png"
    image.save(path)
    return SampleImage(prompt=prompt, path=str(path), with_lora=with_lora)

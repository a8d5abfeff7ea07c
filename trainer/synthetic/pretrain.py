"""Pre-train a tiny pipeline of a family on the shapes domain, so that it draws what its caption says.

A random tiny model is no denoiser, and preference training on it shows nothing. This turns one into a
small but real text-to-image model, in two stages on freshly rendered images (never the same one twice):
1. the VAE (a random decoder cannot draw anything), taught a latent space fixed by construction
   (trainer/synthetic/shape_autoencoder.py), then its scaling factor measured so the latents are
   unit-variance;
2. the whole UNet with the plain denoising loss (epsilon, the pipeline's own noise schedule, a little
   offset noise so that plain backgrounds come from the caption), the text encoders frozen; a share of
   captions leaves the colour out, and a share is dropped to the unconditional embedding the pipeline
   uses for classifier-free guidance;
3. for a family whose text encoder pads prompts to the pipeline's max_sequence_length (FLUX: 512 T5
   tokens, of which a shapes caption fills ten), stage 2 reads the prompts padded to a short length
   (`short_text_length`: a tenth of the cost of a step), and a last stage (`adapt_steps`) trains at the
   pipeline's own length, so the base draws right with a default pipeline call.
The pipeline is written as a diffusers folder, with `pretrain.json` holding the figures measured on the way.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from diffusers.optimization import get_scheduler

from trainer.families.base import Conditioning, ImageGeometry, ModelFamily
from trainer.families.registry import load_family
from trainer.sampling import Renderer
from trainer.synthetic.shape_autoencoder import (
    calibrate_scaling,
    colour_capable_vae,
    reconstruction_error,
    train_autoencoder,
)
from trainer.synthetic.shape_samples import caption_accuracy, every_caption_drawing, judge
from trainer.synthetic.shapes import Drawing, caption, random_drawing, render
from trainer.synthetic.tiny import Family, build_tiny_pipeline, build_tokenizer

REPORT_FILE = "pretrain.json"
HELD_OUT = 64


@dataclass(frozen=True)
class PretrainConfig:
    """How long and how hard each stage trains; the defaults take a few minutes on two CPU cores."""

    resolution: int = 64
    autoencoder_batch_size: int = 16
    autoencoder_steps: int = 500
    autoencoder_lr: float = 2e-3
    batch_size: int = 32
    denoiser_steps: int = 1500
    denoiser_lr: float = 2e-3
    colourless_captions: float = 0.25
    caption_dropout: float = 0.1
    offset_noise: float = 0.1
    short_text_length: int = 32
    adapt_steps: int = 1200
    adapt_batch_size: int = 8  # a step at 512 text tokens costs about ten at 32
    adapt_lr: float = 1e-3
    seed: int = 0


@dataclass
class PretrainReport:
    """Held-out figures before and after each stage; accuracies are shares of the 27 full captions × 2."""

    family: str
    config: dict[str, Any]
    reconstruction_error: tuple[float, float] = (0.0, 0.0)
    denoising_loss: tuple[float, float] = (0.0, 0.0)
    caption_accuracy_before: dict[str, float] = field(default_factory=dict)
    caption_accuracy_after: dict[str, float] = field(default_factory=dict)
    started_from: str | None = None  # the shapes base whose first stages this run reused
    first_stages: dict[str, Any] | None = None  # that base's own report
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The figures without the config, rounded for people."""
        figures = {k: v for k, v in asdict(self).items() if k not in ("family", "config", "first_stages")}
        return {"family": self.family, **_rounded(figures)}


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


Progress = Callable[[str, int, int, float], None]  # stage, step, total, loss


def progress_printer(out: TextIO, *, every: int = 100) -> Progress:
    """A `Progress` that prints one line every `every` steps and at the end of each stage."""

    def report(stage: str, step: int, total: int, loss: float) -> None:
        if step % every == 0 or step == total:
            print(f"{stage} {step}/{total} loss {loss:.4f}", file=out, flush=True)

    return report


def pretrain_tiny(
    family: Family,
    out_dir: Path,
    config: PretrainConfig = PretrainConfig(),
    *,
    on_progress: Progress,
    half: bool = False,
    start_from: Path | None = None,
) -> PretrainReport:
    """Build the tiny random `family` pipeline at `out_dir` and pre-train it there in place; `half`
    stores the UNet and VAE weights in float16 (half the size; diffusers loads them as float32).
    `start_from`, a shapes base made by stages 1 and 2 of this recipe, skips them and runs stage 3 only."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    if start_from is None:
        build_tiny_pipeline(family, out_dir, seed=config.seed, shapes_base=True)
    else:
        shutil.copytree(start_from, out_dir, dirs_exist_ok=True)
    model = load_family(str(out_dir), device=torch.device("cpu"), weight_dtype=torch.float32)
    report = PretrainReport(family=family, config=asdict(config))
    if start_from is None:  # a base started from was measured when it was made
        report.caption_accuracy_before = measure_captions(model, config)
    rng = random.Random(f"held-out-{config.seed}")
    held_out = [random_drawing(rng) for _ in range(HELD_OUT)]
    if start_from is None:
        _autoencoder_stage(model, held_out, config, on_progress, report)
    else:
        report.started_from = str(start_from)
        if (start_from / REPORT_FILE).is_file():
            report.first_stages = json.loads((start_from / REPORT_FILE).read_text(encoding="utf-8"))
    before_loss = denoising_loss(model, held_out, config)
    if start_from is None:
        short_text_stage(model, config, on_progress)
    if model.text_length is not None and model.text_length > config.short_text_length:
        adapt = replace(config, batch_size=config.adapt_batch_size)
        train_denoiser(model, adapt, on_progress, stage="adapt", steps=config.adapt_steps, lr=config.adapt_lr)
    report.denoising_loss = (before_loss, denoising_loss(model, held_out, config))
    report.caption_accuracy_after = measure_captions(model, config)
    _save(model, out_dir, half=half)
    report.seconds = time.perf_counter() - started
    (out_dir / REPORT_FILE).write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    return report


def _save(model: ModelFamily, out_dir: Path, *, half: bool) -> None:
    dtype = torch.float16 if half else torch.float32
    modules: tuple[tuple[str, Any], ...] = ((model.facts.denoiser, model.denoiser), ("vae", model.vae))
    for name, module in modules:
        module.to(dtype).save_pretrained(out_dir / name)
        module.to(torch.float32)
    # transformers 5 saves tokenizer.json only; transformers 4's CLIPTokenizer reads vocab.json +
    # merges.txt, so both are kept beside it and the folder loads with either.
    for name in ("tokenizer", "tokenizer_2"):
        config = out_dir / name / "tokenizer_config.json"
        if config.is_file() and "CLIPTokenizer" in config.read_text(encoding="utf-8"):
            build_tokenizer(out_dir / name)


def _autoencoder_stage(
    model: ModelFamily,
    held_out: list[Drawing],
    config: PretrainConfig,
    on_progress: Progress,
    report: PretrainReport,
) -> None:
    """Stage 1: a VAE that can draw the shapes, its latents calibrated to unit variance."""
    before = reconstruction_error(model.vae, _images(held_out, config))
    model.vae = colour_capable_vae(model.vae, seed=config.seed)
    _train_vae(model, config, on_progress)
    report.reconstruction_error = (before, reconstruction_error(model.vae, _images(held_out, config)))


def short_text_stage(model: ModelFamily, config: PretrainConfig, on_progress: Progress) -> None:
    """Stage 2: the denoiser, with prompts padded to `short_text_length` at most."""
    pipeline_length = model.text_length
    if pipeline_length is not None:
        model.text_length = min(pipeline_length, config.short_text_length)
    steps, lr = config.denoiser_steps, config.denoiser_lr
    train_denoiser(model, config, on_progress, stage="denoiser", steps=steps, lr=lr)
    model.text_length = pipeline_length


def _images(drawings: list[Drawing], config: PretrainConfig) -> torch.Tensor:
    """(N, 3, R, R) in [-1, 1]."""
    pixels = np.stack([np.asarray(render(d, config.resolution)) for d in drawings])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _train_vae(model: ModelFamily, config: PretrainConfig, on_progress: Progress) -> None:
    rng = random.Random(f"autoencoder-{config.seed}")
    train_autoencoder(
        model.vae,
        lambda: _images([random_drawing(rng) for _ in range(config.autoencoder_batch_size)], config),
        steps=config.autoencoder_steps,
        lr=config.autoencoder_lr,
        on_step=lambda step, loss: on_progress("autoencoder", step, config.autoencoder_steps, loss),
    )
    rng = random.Random(f"scale-{config.seed}")
    calibrate_scaling(model.vae, _images([random_drawing(rng) for _ in range(256)], config))


def train_denoiser(
    model: ModelFamily, config: PretrainConfig, on_progress: Progress, *, stage: str, steps: int, lr: float
) -> None:
    """Full denoiser training with the family's plain loss (epsilon or velocity) on fresh images and
    (mostly) their captions, `steps` steps at peak learning rate `lr` (cosine), reported as `stage`."""
    denoiser, rng = model.denoiser, random.Random(f"{stage}-{config.seed}")
    captions = CaptionEmbeddings(model)
    denoiser.requires_grad_(True)
    denoiser.train()
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=lr, weight_decay=1e-2)
    schedule = get_scheduler(
        "cosine", optimizer, num_warmup_steps=min(50, steps // 10), num_training_steps=steps
    )
    for step in range(1, steps + 1):
        drawings = [random_drawing(rng) for _ in range(config.batch_size)]
        prompts = [_training_caption(d, rng, config) for d in drawings]
        latents = _latents(model, _images(drawings, config))
        noise = _offset_noise(latents, config.offset_noise)
        levels = model.draw_levels(len(latents), latents=latents)
        loss = _denoising_error(model, captions.of(prompts), latents, noise, levels).mean()
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(denoiser.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        on_progress(stage, step, steps, float(loss.detach()))
    denoiser.requires_grad_(False)
    denoiser.eval()


def _offset_noise(latents: torch.Tensor, offset: float) -> torch.Tensor:
    """Gaussian noise plus a per-image, per-channel constant of std `offset`.

    A plain background is the latent's mean, and at the noisiest timesteps the mean of the noise hides it
    no better than a coin: a model trained on plain noise takes the starting noise's mean for the
    background and ignores the caption's (SD's known trouble with plain dark or bright images)."""
    constant = torch.randn(latents.shape[0], latents.shape[1], 1, 1)
    return torch.randn_like(latents) + offset * constant


def _training_caption(drawing: Drawing, rng: random.Random, config: PretrainConfig) -> str:
    """ "" stands for the unconditional embedding (classifier-free guidance's negative)."""
    draw = rng.random()
    if draw < config.caption_dropout:
        return ""
    return caption(drawing, with_colour=draw >= config.caption_dropout + config.colourless_captions)


class CaptionEmbeddings:
    """The frozen text encoders' output per caption, computed once (the domain has 37 captions); ""
    is what the family's pipeline guides against."""

    def __init__(self, model: ModelFamily) -> None:
        self.model = model
        self._cache: dict[str, Conditioning] = {}

    def of(self, prompts: list[str]) -> Conditioning:
        for prompt in set(prompts) - self._cache.keys():
            encoded = self.model.unconditional(1) if prompt == "" else self.model.encode_prompts([prompt])
            self._cache[prompt] = encoded
        return Conditioning.cat([self._cache[p] for p in prompts])


@torch.no_grad()
def _latents(model: ModelFamily, pixels: torch.Tensor) -> torch.Tensor:
    mean, std = model.encode_pixels(pixels)
    return model.to_latents(mean + std * torch.randn_like(mean))


def _denoising_error(
    model: ModelFamily,
    conditioning: Conditioning,
    latents: torch.Tensor,
    noise: torch.Tensor,
    levels: torch.Tensor,
) -> torch.Tensor:
    """Per-image (weighted) mean squared error of the denoiser's prediction, shape (N,)."""
    noised = model.add_noise(latents, noise, levels)
    geometry = ImageGeometry.uncropped(len(latents), latents.shape[-1] * model.vae_scale_factor)
    pred = model.predict(model.denoiser, noised.noisy, levels, conditioning, geometry)
    errors = (pred - noised.target).pow(2).mean(dim=(1, 2, 3))
    return errors if noised.weighting is None else errors * noised.weighting


@torch.no_grad()
def denoising_loss(model: ModelFamily, drawings: list[Drawing], config: PretrainConfig) -> float:
    """Mean denoising error on held-out images with their full captions, at fixed timesteps and noise."""
    conditioning = CaptionEmbeddings(model).of([caption(d) for d in drawings])
    latents = model.to_latents(model.encode_pixels(_images(drawings, config))[0])
    generator = torch.Generator().manual_seed(config.seed)
    errors = []
    for level in model.evaluation_levels(latents=latents):
        noise = torch.randn(latents.shape, generator=generator)
        levels = level.expand(len(latents))
        errors.append(_denoising_error(model, conditioning, latents, noise, levels).mean())
    return float(torch.stack(errors).mean())


def measure_captions(model: ModelFamily, config: PretrainConfig) -> dict[str, float]:
    """Caption accuracy of samples of every full caption, from two fixed seeds."""
    renderer = Renderer.build(model, model.denoiser)
    drawings = every_caption_drawing() * 2
    return caption_accuracy(judge(renderer, drawings, seed=config.seed, resolution=config.resolution))

"""The interface every model family implements, and the text conditioning it hands the engine.

The engine (loop, objective, cache, evaluation, sampling, export) holds a `ModelFamily` and calls only
these methods, so it never branches on a family. A batch of B pairs is always laid out as 2B images,
[chosen_1..B; rejected_1..B], and both images of a pair share noise, noise level and conditioning.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import diffusers
import torch
from diffusers import AutoencoderKL
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from trainer.errors import ModelLoadError
from trainer.families import FAMILIES, FamilyFacts, FamilyName
from trainer.families.loading import Loading


@dataclass
class Conditioning:
    """Text conditioning of N prompts: named tensors, each with the prompt axis first.

    Which names a family uses is its own business (SD: prompt_embeds; SDXL, SD3, FLUX: prompt_embeds and
    pooled); the engine only batches, repeats and moves them.
    """

    tensors: dict[str, torch.Tensor]

    def repeat(self, times: int) -> Conditioning:
        """The N prompts' conditioning `times` over along the prompt axis: (times * N, ...)."""
        return Conditioning({k: v.repeat(times, *([1] * (v.ndim - 1))) for k, v in self.tensors.items()})

    def repeat_for_pairs(self) -> Conditioning:
        """Duplicate along the batch for the [chosen; rejected] layout: both images share a prompt."""
        return self.repeat(2)

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> Conditioning:
        return Conditioning({k: v.to(device, dtype) for k, v in self.tensors.items()})

    def select(self, index: int) -> Conditioning:
        """Prompt `index` alone, still with a prompt axis of 1."""
        return Conditioning({k: v[index : index + 1] for k, v in self.tensors.items()})

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        return Conditioning({k: torch.cat([p.tensors[k] for p in parts]) for k in parts[0].tensors})

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]


@dataclass
class ImageGeometry:
    """Per pair: (h, w) before resizing and the (top, left) of the crop, as SDXL's time ids record."""

    original_sizes: torch.Tensor  # (B, 2)
    crop_top_lefts: torch.Tensor  # (B, 2)
    resolution: int

    @staticmethod
    def uncropped(num: int, resolution: int) -> ImageGeometry:
        sizes = torch.full((num, 2), resolution, dtype=torch.long)
        return ImageGeometry(sizes, torch.zeros((num, 2), dtype=torch.long), resolution)


@dataclass
class Noised:
    """What the denoiser sees and must predict, for 2B images.

    noisy, target: (2B, C, h, w). weighting: (2B,) per-image loss weights, or None for all ones.
    """

    noisy: torch.Tensor
    target: torch.Tensor
    weighting: torch.Tensor | None = None


class ModelFamily(ABC):
    """A loaded base model: frozen VAE, text encoders and denoiser, and how training talks to them.

    Noise levels are a (B,) tensor in the family's own units: integer timesteps for the UNet families,
    sigmas in [0, 1] for the flow-matching ones. `draw_levels` samples them for training,
    `evaluation_levels` gives the fixed ones held-out scoring uses.
    """

    name: ClassVar[FamilyName]
    denoiser_class: ClassVar[Any]  # UNet2DConditionModel, SD3Transformer2DModel, ...
    scheduler_class: ClassVar[Any]
    vae_class: ClassVar[Any] = AutoencoderKL
    default_lora_targets: ClassVar[tuple[str, ...]] = ("to_q", "to_k", "to_v", "to_out.0")
    lora_layers_argument: ClassVar[str] = "transformer_lora_layers"
    # Class names of the denoiser's repeated blocks, compiled one by one (regional compile). Empty: the
    # ones diffusers declares (`_repeated_blocks`); a family whose model declares none names them.
    repeated_blocks: ClassVar[tuple[str, ...]] = ()
    # Suffixes of the attention processor classes that call torch's scaled_dot_product_attention.
    sdpa_processors: ClassVar[tuple[str, ...]] = ("2_0",)
    # Tokens a padded text encoder reads a prompt as: the pipeline's default max_sequence_length, which
    # training must use (its transformer attends to the padding). None: the family has no such choice.
    default_text_length: ClassVar[int | None] = None
    # Which argument of the pipeline's __call__ takes each Conditioning tensor, for the prompts and for
    # the negative prompt: (prompt's, negative's). A family whose pipeline names them otherwise says so.
    pipeline_embedding_names: ClassVar[dict[str, tuple[str, str]]] = {
        "prompt_embeds": ("prompt_embeds", "negative_prompt_embeds"),
        "pooled": ("pooled_prompt_embeds", "negative_pooled_prompt_embeds"),
    }

    def __init__(
        self,
        *,
        source: str,
        denoiser: Any,
        vae: Any,
        text_encoders: list[Any],
        tokenizers: list[Any],
        scheduler: Any,
        options: dict[str, Any],
    ) -> None:
        # The ML libraries' modules are untyped for mypy (pyproject), so these are Any.
        self.source, self.denoiser, self.vae = source, denoiser, vae
        self.text_encoders, self.tokenizers, self.scheduler = text_encoders, tokenizers, scheduler
        # Only the shapes pre-training shortens it (trainer/synthetic/pretrain.py); jobs never do.
        self.text_length = self.default_text_length

    @classmethod
    def load(cls, loading: Loading, *, options: dict[str, Any]) -> ModelFamily:
        """Load the components of `loading.source` (a diffusers folder or hub id): the denoiser and text
        encoders at their precisions (quantized ones straight onto the device, the rest on the CPU), the
        VAE in float32. `options` are the spec's family-specific fields (None where unset)."""
        source = loading.source
        try:
            denoiser = loading.denoiser_model(cls.denoiser_class, FAMILIES[cls.name].denoiser)
            vae = cls.vae_class.from_pretrained(source, subfolder="vae", torch_dtype=torch.float32)
            scheduler = cls.scheduler_class.from_pretrained(source, subfolder="scheduler")
            encoders, tokenizers = cls.load_text_stack(loading, options=options)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"cannot load base model {source!r}: {exc}") from exc
        return cls(
            source=source,
            denoiser=denoiser,
            vae=vae,
            text_encoders=encoders,
            tokenizers=tokenizers,
            scheduler=scheduler,
            options=options,
        )

    @classmethod
    @abstractmethod
    def load_text_stack(cls, loading: Loading, *, options: dict[str, Any]) -> tuple[list[Any], list[Any]]:
        """The family's text encoders (each through `loading.text_encoder`) and their tokenizers, in
        pipeline order."""

    @property
    def facts(self) -> FamilyFacts:
        return FAMILIES[self.name]

    @property
    def vae_scale_factor(self) -> int:
        return int(2 ** (len(self.vae.config.block_out_channels) - 1))

    def padded_length(self) -> int:
        """The length the text encoder's tokens are padded to (`text_length`, set by the family)."""
        if self.text_length is None:
            raise TypeError(f"the {self.name} family pads no text to a fixed length")
        return self.text_length

    @property
    def latent_channels(self) -> int:
        """Channels of the latents the denoiser is trained on (what `to_latents` returns)."""
        return int(self.vae.config.latent_channels)

    @property
    def native_resolution(self) -> int:
        """The square size the base model was trained at, in pixels, read as the API reads it."""
        facts = self.facts

        def read(component: str, _name: str) -> dict[str, Any]:
            module = {"vae": self.vae, facts.denoiser: self.denoiser}[component]
            return dict(module.config)

        return facts.native_resolution(read, facts.denoiser)

    def discarded_modules(self) -> list[str]:
        """Modules of the denoiser whose output it throws away: a LoRA there gets no gradient, which
        would stall data-parallel training (DDP waits for every parameter's), so none is attached."""
        return []

    def enable_gradient_checkpointing(self, denoiser: torch.nn.Module) -> None:
        """Recompute the denoiser's activations in the backward pass (diffusers' own switch)."""
        denoiser.enable_gradient_checkpointing()  # type: ignore[operator]

    def repeated_block_names(self) -> tuple[str, ...]:
        """The class names of the denoiser's repeated blocks (its transformer blocks)."""
        return self.repeated_blocks or tuple(getattr(self.denoiser, "_repeated_blocks", ()) or ())

    def non_sdpa_processors(self, denoiser: torch.nn.Module) -> list[str]:
        """The attention layers of `denoiser` whose processor does not call torch's SDPA."""
        return [
            name
            for name, processor in attention_processors(denoiser).items()
            if not type(processor).__name__.endswith(self.sdpa_processors)
        ]

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    @abstractmethod
    def prediction_type(self) -> str:
        """epsilon, v_prediction or flow (velocity)."""

    @property
    @abstractmethod
    def margin_scale(self) -> float:
        """MaPO's default T, which sharpens the log-sigmoid of the margin (1000 for the UNet families)."""

    @property
    @abstractmethod
    def dpo_beta(self) -> float:
        """Diffusion-DPO's default beta for this family's errors."""

    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """The frozen text encoders' conditioning of `prompts` (no gradients)."""

    def unconditional(self, num: int) -> Conditioning:
        """What the pipeline's classifier-free guidance conditions the unconditional branch on: by
        default the encoded empty prompt, `num` times."""
        return self.encode_prompts([""]).repeat(num)

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, R, R) pixels in [-1, 1] -> the VAE posterior's mean and std, each (N, C, R/f, R/f),
        float32, before `to_latents`."""
        dist = self.vae.encode(pixels.to(self.vae.device, torch.float32)).latent_dist
        return dist.mean, dist.std

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents as the denoiser sees them -> (N, 3, R, R) pixels in [-1, 1], float32."""
        decoded: torch.Tensor = self.vae.decode(
            self.from_latents(latents.to(self.vae.device, torch.float32))
        ).sample
        return decoded

    def to_latents(self, sample: torch.Tensor) -> torch.Tensor:
        """A VAE posterior sample -> the latents the denoiser is trained on."""
        shift = self.vae.config.get("shift_factor") or 0.0
        return (sample - float(shift)) * float(self.vae.config.scaling_factor)

    def from_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of `to_latents`: what the VAE decoder takes."""
        shift = self.vae.config.get("shift_factor") or 0.0
        return latents / float(self.vae.config.scaling_factor) + float(shift)

    @abstractmethod
    def draw_levels(self, num: int, *, latents: torch.Tensor) -> torch.Tensor:
        """(num,) noise levels for training, drawn from the global RNG; `latents` (k·num, C, h, w) give
        device and size (FLUX's shift depends on the image's token count)."""

    @abstractmethod
    def evaluation_levels(self, *, latents: torch.Tensor) -> list[torch.Tensor]:
        """Fixed noise levels for held-out scoring, each a 0-d tensor."""

    @abstractmethod
    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, levels: torch.Tensor) -> Noised:
        """Noisy input and regression target; all three arguments have the image axis first (2B, or B
        where a step takes the chosen images alone)."""

    @abstractmethod
    def predict(
        self,
        denoiser: torch.nn.Module,
        noisy: torch.Tensor,
        levels: torch.Tensor,
        conditioning: Conditioning,
        geometry: ImageGeometry,
    ) -> torch.Tensor:
        """The denoiser's prediction for `noisy` (2B, C, h, w), or (B, C, h, w) for the chosen images
        alone, same shape. `denoiser` is this family's denoiser or a wrapper of it (accelerate's
        distributed one), with or without LoRA enabled."""

    def pipeline_components(self, denoiser: torch.nn.Module) -> dict[str, Any]:
        """The components of this family's pipeline, sharing the loaded modules, with `denoiser`: the
        denoiser under its folder's name, the VAE, and the text encoders and tokenizers in pipeline
        order as diffusers names them (text_encoder, text_encoder_2, ...)."""
        components: dict[str, Any] = {self.facts.denoiser: denoiser, "vae": self.vae}
        # Freed encoders are passed as None: the pipeline then takes embeddings (`pipeline_embeddings`).
        encoders = self.text_encoders or [None] * len(self.tokenizers)
        for index, (encoder, tokenizer) in enumerate(zip(encoders, self.tokenizers, strict=True)):
            suffix = "" if index == 0 else f"_{index + 1}"
            components |= {f"text_encoder{suffix}": encoder, f"tokenizer{suffix}": tokenizer}
        return components

    def sampling_arguments(self, guidance_scale: float) -> dict[str, Any]:
        """Keyword arguments of the pipeline's __call__ for classifier-free guidance at `guidance_scale`
        (and whatever else the family's pipeline needs, a text length, say)."""
        return {"guidance_scale": guidance_scale}

    def guides_against_negative(self, guidance_scale: float) -> bool:
        """Whether the pipeline, called with `sampling_arguments(guidance_scale)`, runs classifier-free
        guidance against a negative prompt, whose embeddings it must then be given too. Default: the
        diffusers rule `guidance_scale > 1`."""
        return guidance_scale > 1.0

    def pipeline_embeddings(
        self, conditioning: Conditioning, negative: Conditioning | None
    ) -> dict[str, Any]:
        """Keyword arguments of the pipeline's __call__ that stand in for its prompt texts: the N prompts'
        `conditioning` and, where the call guides (`guides_against_negative`), the `negative` prompt's
        (N rows), each tensor under the name `pipeline_embedding_names` gives it. With them the pipeline
        needs no text encoder."""
        arguments: dict[str, Any] = {}
        for name, tensor in conditioning.tensors.items():
            prompt_argument, negative_argument = self.pipeline_embedding_names[name]
            arguments[prompt_argument] = tensor
            if negative is not None:
                arguments[negative_argument] = negative[name]
        return arguments

    def free_text_encoders(self) -> None:
        """Drop this family's references to its text encoders, once all it will condition on is encoded
        (the latent cache, the held-out pairs, the validation prompts), so that their memory can go back.
        The tokenizers stay: host-side and small. `encode_prompts` cannot be called afterwards."""
        self.text_encoders = []

    def pipeline_latents(self, latents: torch.Tensor, resolution: int) -> torch.Tensor:
        """A pipeline's output_type='latent' result -> (B, C, h, w) latents (FLUX's come packed)."""
        return latents

    def lora_state(self, denoiser: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The adapter's weights as this family's diffusers LoRA file keys them (without the component
        prefix), float32, on the CPU. Default: peft's naming (`<module>.lora_A.weight`)."""
        state = get_peft_model_state_dict(denoiser)
        return {key: value.detach().float().cpu().contiguous() for key, value in state.items()}

    @abstractmethod
    def kohya_state(self, state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
        """`state` (from `lora_state`) in the ComfyUI/kohya naming."""

    def save_lora(self, state: dict[str, torch.Tensor], config: LoraConfig, out_dir: Path, name: str) -> None:
        """Write a diffusers LoRA file that this family's pipeline `load_lora_weights` reads."""
        pipeline_cls = getattr(diffusers, self.facts.pipeline_class)
        metadata_argument = self.lora_layers_argument.replace("_layers", "_adapter_metadata")
        pipeline_cls.save_lora_weights(
            out_dir,
            weight_name=name,
            **{self.lora_layers_argument: state, metadata_argument: _loading_metadata(config, state)},
        )


def attention_processors(denoiser: torch.nn.Module) -> dict[str, object]:
    """{"<module>.processor": processor} of every diffusers attention layer in `denoiser` (those with
    `get_processor`), as AttentionMixin.attn_processors names them; a denoiser without that mixin
    (Z-Image's) has them all the same."""
    return {
        f"{name}.processor": module.get_processor()
        for name, module in denoiser.named_modules()
        if callable(getattr(module, "get_processor", None))
    }


def _loading_metadata(config: LoraConfig, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The adapter's peft config as the file's loader needs it (rank, alpha, targets). Where modules
    were excluded from training, the targets become the adapted modules' own names: the loader would
    otherwise find the excluded ones matching and warn that the file lacks them."""
    metadata: dict[str, Any] = config.to_dict()
    if metadata.pop("exclude_modules", None):
        suffixes = (".lora_A.weight", ".lora_B.weight", ".lora.down.weight", ".lora.up.weight")
        metadata["target_modules"] = sorted({_strip(key, suffixes) for key in state})
    return metadata


def _strip(key: str, suffixes: tuple[str, ...]) -> str:
    for suffix in suffixes:
        if key.endswith(suffix):
            return key.removesuffix(suffix)
    return key

"""FLUX.1 (dev and schnell): a rectified-flow transformer over 2x2-packed 16-channel latents.

Latents (B, 16, h, w) are packed into (B, h/2 * w/2, 64) tokens, with position ids (0, row, column) per
token and zeros for the text tokens. Conditioning: CLIP-L's pooled output and T5's hidden states. The
transformer takes timestep = sigma (it multiplies by 1000 itself) and, for FLUX.1-dev (guidance_embeds),
a guidance value (3.5 by default, as diffusers' FLUX scripts use; `guidance` in the spec). Sigmas carry the
resolution-dependent shift of the scheduler's `use_dynamic_shifting`. T5 reads the prompt padded to
`FluxPipeline`'s default max_sequence_length (512), whatever the tokenizer's own length: the transformer
attends to every padding token, so an adapter trained on another length draws wrongly with the defaults.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from trainer.families import FamilyName
from trainer.families.base import Conditioning, ImageGeometry
from trainer.families.flow import FlowFamily
from trainer.families.loading import Loading
from trainer.families.text import clip_ids, token_ids

DEFAULT_GUIDANCE = 3.5


class FluxFamily(FlowFamily):
    name: ClassVar[FamilyName] = "flux"
    denoiser_class: ClassVar[Any] = FluxTransformer2DModel
    scheduler_class: ClassVar[Any] = FlowMatchEulerDiscreteScheduler
    default_text_length: ClassVar[int | None] = 512  # FluxPipeline's default max_sequence_length
    # FLUX's processors name no torch version, and they call SDPA through diffusers' dispatcher.
    sdpa_processors: ClassVar[tuple[str, ...]] = ("2_0", "FluxAttnProcessor")

    def __init__(self, *, options: dict[str, Any], **components: Any) -> None:
        super().__init__(options=options, **components)
        guidance = options.get("guidance")
        self.guidance = DEFAULT_GUIDANCE if guidance is None else float(guidance)

    @classmethod
    def load_text_stack(cls, loading: Loading, *, options: dict[str, Any]) -> tuple[list[Any], list[Any]]:
        source = loading.source
        encoders: list[Any] = [
            loading.text_encoder(CLIPTextModel, "text_encoder"),
            loading.text_encoder(T5EncoderModel, "text_encoder_2"),
        ]
        tokenizers: list[Any] = [
            CLIPTokenizer.from_pretrained(source, subfolder="tokenizer"),
            T5TokenizerFast.from_pretrained(source, subfolder="tokenizer_2"),
        ]
        return encoders, tokenizers

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.denoiser.config.guidance_embeds)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        clip, t5 = self.text_encoders
        pooled = clip(clip_ids(self.tokenizers[0], prompts).to(clip.device)).pooler_output
        hidden = t5(token_ids(self.tokenizers[1], prompts, self.padded_length()).to(t5.device))[0]
        return Conditioning({"prompt_embeds": hidden, "pooled": pooled.to(hidden.dtype)})

    def predict(
        self,
        denoiser: torch.nn.Module,
        noisy: torch.Tensor,
        levels: torch.Tensor,
        conditioning: Conditioning,
        geometry: ImageGeometry,
    ) -> torch.Tensor:
        embeds = conditioning["prompt_embeds"]
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full((len(noisy),), self.guidance, device=noisy.device, dtype=noisy.dtype)
        packed = denoiser(
            hidden_states=pack_latents(noisy),
            timestep=levels.to(noisy.dtype),
            guidance=guidance,
            pooled_projections=conditioning["pooled"],
            encoder_hidden_states=embeds,
            txt_ids=embeds.new_zeros((embeds.shape[1], 3)),
            img_ids=image_ids(
                noisy.shape[-2] // 2, noisy.shape[-1] // 2, device=noisy.device, dtype=noisy.dtype
            ),
            return_dict=False,
        )[0]
        return unpack_latents(packed, noisy.shape[-2], noisy.shape[-1])

    def sampling_arguments(self, guidance_scale: float) -> dict[str, Any]:
        """FLUX.1-dev takes the guidance as an input (distilled guidance); a model without a guidance
        embedding (schnell, the shapes base) gets true classifier-free guidance against "" instead."""
        if self.guidance_embeds or guidance_scale <= 1.0:
            return {"guidance_scale": guidance_scale}
        return {"true_cfg_scale": guidance_scale, "negative_prompt": ""}

    def guides_against_negative(self, guidance_scale: float) -> bool:
        """Only the true classifier-free guidance of `sampling_arguments` has a negative prompt."""
        return not self.guidance_embeds and guidance_scale > 1.0

    def pipeline_latents(self, latents: torch.Tensor, resolution: int) -> torch.Tensor:
        size = 2 * (resolution // (self.vae_scale_factor * 2))
        return unpack_latents(latents, size, size)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N, h/2 * w/2, 4C): each 2x2 patch becomes one token, row-major."""
    n, c, h, w = latents.shape
    patches = latents.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(n, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of `pack_latents` for latents of `height` x `width`."""
    n, _, features = tokens.shape
    patches = tokens.view(n, height // 2, width // 2, features // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(n, features // 4, height, width)


def image_ids(rows: int, cols: int, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(rows * cols, 3) position ids of the packed tokens: (0, row, column)."""
    ids = torch.zeros(rows, cols, 3, device=device, dtype=dtype)
    ids[..., 1] += torch.arange(rows, device=device, dtype=dtype)[:, None]
    ids[..., 2] += torch.arange(cols, device=device, dtype=dtype)[None, :]
    return ids.reshape(rows * cols, 3)

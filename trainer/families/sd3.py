"""SD3 and SD3.5: an MMDiT over 16-channel latents, conditioned on CLIP-L + CLIP-G + (optionally) T5.

Text conditioning as the SD3 pipeline builds it: the two CLIP encoders' penultimate hidden states side by
side (768 + 1280), zero-padded to T5's width and followed by T5's tokens on the sequence axis; pooled =
both CLIP projections side by side. Without T5 (`use_t5: false`, saving its ~9 GB) its tokens are zeros,
as the pipeline does when text_encoder_3 is None. The transformer takes timestep = sigma * 1000.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from trainer.families import FamilyName
from trainer.families.base import Conditioning, ImageGeometry
from trainer.families.flow import FlowFamily
from trainer.families.loading import Loading
from trainer.families.text import CLIP_LENGTH, clip_ids, token_ids


class SD3Family(FlowFamily):
    name: ClassVar[FamilyName] = "sd3"
    denoiser_class: ClassVar[Any] = SD3Transformer2DModel
    scheduler_class: ClassVar[Any] = FlowMatchEulerDiscreteScheduler
    # StableDiffusion3Pipeline's default max_sequence_length: train with what it samples with.
    default_text_length: ClassVar[int | None] = 256
    # diffusers declares no `_repeated_blocks` for the SD3 transformer.
    repeated_blocks: ClassVar[tuple[str, ...]] = ("JointTransformerBlock",)

    @classmethod
    def load_text_stack(cls, loading: Loading, *, options: dict[str, Any]) -> tuple[list[Any], list[Any]]:
        source = loading.source
        encoders: list[Any] = [
            loading.text_encoder(CLIPTextModelWithProjection, sub)
            for sub in ("text_encoder", "text_encoder_2")
        ]
        tokenizers: list[Any] = [
            CLIPTokenizer.from_pretrained(source, subfolder=sub) for sub in ("tokenizer", "tokenizer_2")
        ]
        if options.get("use_t5") is not False:
            encoders.append(loading.text_encoder(T5EncoderModel, "text_encoder_3"))
            tokenizers.append(T5TokenizerFast.from_pretrained(source, subfolder="tokenizer_3"))
        return encoders, tokenizers

    @property
    def has_t5(self) -> bool:
        # Counted on the tokenizers, which stay when the text encoders are freed.
        return len(self.tokenizers) == 3

    @property
    def t5_tokens(self) -> int:
        """T5's share of the text tokens; without T5 the pipeline puts 77 zero tokens in its place."""
        return self.padded_length() if self.has_t5 else CLIP_LENGTH

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        hidden, pooled = [], []
        for tokenizer, encoder in zip(self.tokenizers[:2], self.text_encoders[:2], strict=True):
            out = encoder(clip_ids(tokenizer, prompts).to(encoder.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled.append(out[0])
        clip = torch.cat(hidden, dim=-1)
        width = int(self.denoiser.config.joint_attention_dim)
        if self.has_t5:
            encoder = self.text_encoders[2]
            t5 = encoder(token_ids(self.tokenizers[2], prompts, self.t5_tokens).to(encoder.device))[0]
        else:
            t5 = clip.new_zeros((len(prompts), self.t5_tokens, width))
        clip = F.pad(clip, (0, width - clip.shape[-1]))
        return Conditioning(
            {
                "prompt_embeds": torch.cat([clip, t5.to(clip.dtype)], dim=-2),
                "pooled": torch.cat(pooled, dim=-1),
            }
        )

    def predict(
        self,
        denoiser: torch.nn.Module,
        noisy: torch.Tensor,
        levels: torch.Tensor,
        conditioning: Conditioning,
        geometry: ImageGeometry,
    ) -> torch.Tensor:
        prediction: torch.Tensor = denoiser(
            hidden_states=noisy,
            timestep=levels * 1000.0,
            encoder_hidden_states=conditioning["prompt_embeds"],
            pooled_projections=conditioning["pooled"],
            return_dict=False,
        )[0]
        return prediction

    def pipeline_components(self, denoiser: torch.nn.Module) -> dict[str, Any]:
        # Without T5 the pipeline is told so, as it is loaded without text_encoder_3.
        no_t5 = {} if self.has_t5 else {"text_encoder_3": None, "tokenizer_3": None}
        return super().pipeline_components(denoiser) | no_t5

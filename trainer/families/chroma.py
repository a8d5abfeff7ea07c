"""Chroma (Chroma1-Base/HD): a FLUX.1-schnell-derived rectified-flow transformer conditioned on T5 alone.

Facts followed, from diffusers 0.42's `ChromaPipeline` (pipelines/chroma/pipeline_chroma.py) and
`ChromaTransformer2DModel` (models/transformers/transformer_chroma.py):

- Text (`_get_t5_prompt_embeds`): T5's last hidden states at the pipeline's default
  `max_sequence_length` of 512 tokens, whatever the tokenizer's `model_max_length` says, with T5 run on
  the tokenizer's attention mask (unlike FLUX.1). No CLIP, no pooled projection.
- The transformer's text mask keeps every real token (EOS included) and the first padding token:
  position i is kept where i <= the number of real tokens. It is a float 0/1 tensor in the text
  encoder's dtype, and `_prepare_attention_mask` appends ones for the image tokens. Each block turns it
  into a (B, 1, S, S) float mask, which torch's SDPA ADDS to the attention scores: kept pairs get +1,
  "masked" ones +0, so the padding is down-weighted, not removed. We pass exactly that float tensor, so
  training sees what sampling sees (diffusers issues #12116 and #13619 discuss switching it to a bool
  mask; if that lands, this module must follow).
- Timestep: the pipeline passes t / 1000 with t = sigma * 1000 and the model multiplies by 1000 again, so
  `timestep = sigma`. No guidance input: the approximator (`distilled_guidance_layer`) embeds the
  timestep and a hard-coded guidance of 0. `guidance_scale` (default 5.0) is true classifier-free
  guidance against the encoded "" (`negative_prompt or ""`), with the same length and mask rule, so
  `unconditional()` is the base class's encoded empty prompt and `sampling_arguments` only maps
  guidance_scale.
- Latents: FLUX.1's VAE convention (latents = (sample - shift_factor) * scaling_factor) and 2x2 packing
  with (0, row, column) image ids and zero text ids (flux.pack_latents / unpack_latents / image_ids).
  The sampling schedule always computes FLUX's mu from the image's token count (`calculate_shift`) and
  the scheduler applies it where `use_dynamic_shifting` is set: FlowFamily.sigmas does the same.
- LoRA: `FluxLoraLoaderMixin`, so the diffusers file is FLUX's (`transformer.<module>.lora_A.weight`).
  ComfyUI's Chroma model is a subclass of its Flux model and maps `lora_transformer_<module>` keys for
  it, so the ComfyUI export is FlowFamily's `lora_transformer_` kohya file, which diffusers' FLUX
  loader also reads back (tests/trainer/test_family_chroma.py checks identical images).

Gradient checkpointing is ours, not diffusers': with its switch on (and gradients on), diffusers 0.42
calls the single-stream blocks WITHOUT the attention mask (ChromaTransformer2DModel.forward passes only
hidden_states, temb and image_rotary_emb to `_gradient_checkpointing_func`), so a job would train on
another function than the pipeline samples with. `enable_gradient_checkpointing` instead checkpoints
each block's own call, every argument kept.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch
import torch.utils.checkpoint
from diffusers import ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler
from transformers import T5EncoderModel, T5TokenizerFast

from trainer.compiling import repeated_blocks
from trainer.families import FamilyName
from trainer.families.base import Conditioning, ImageGeometry
from trainer.families.flow import FlowFamily
from trainer.families.flux import image_ids, pack_latents, unpack_latents
from trainer.families.loading import Loading


class ChromaFamily(FlowFamily):
    name: ClassVar[FamilyName] = "chroma"
    denoiser_class: ClassVar[Any] = ChromaTransformer2DModel
    scheduler_class: ClassVar[Any] = FlowMatchEulerDiscreteScheduler
    # ChromaPipeline's default max_sequence_length (and check_inputs' cap).
    default_text_length: ClassVar[int | None] = 512
    repeated_blocks: ClassVar[tuple[str, ...]] = ("ChromaTransformerBlock", "ChromaSingleTransformerBlock")
    # Chroma's attention modules are FluxAttention with FluxAttnProcessor (SDPA via diffusers' dispatcher).
    sdpa_processors: ClassVar[tuple[str, ...]] = ("2_0", "FluxAttnProcessor")
    # The pipeline takes our text mask as it is (encode_prompt passes prompt_attention_mask through).
    pipeline_embedding_names: ClassVar[dict[str, tuple[str, str]]] = {
        "prompt_embeds": ("prompt_embeds", "negative_prompt_embeds"),
        "mask": ("prompt_attention_mask", "negative_prompt_attention_mask"),
    }

    @classmethod
    def load_text_stack(cls, loading: Loading, *, options: dict[str, Any]) -> tuple[list[Any], list[Any]]:
        """T5 is the pipeline's `text_encoder` / `tokenizer` (not FLUX's `_2`)."""
        encoders: list[Any] = [loading.text_encoder(T5EncoderModel, "text_encoder")]
        tokenizers: list[Any] = [T5TokenizerFast.from_pretrained(loading.source, subfolder="tokenizer")]
        return encoders, tokenizers

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """{"prompt_embeds": (N, 512, D) T5 states, "mask": (N, 512) float 0/1 text mask}, as
        ChromaPipeline.encode_prompt gives the transformer (see the module docstring for the mask)."""
        (encoder,) = self.text_encoders
        tokens = self.tokenizers[0](
            prompts,
            padding="max_length",
            max_length=self.padded_length(),
            truncation=True,
            return_tensors="pt",
        )
        tokenizer_mask = tokens.attention_mask.to(encoder.device)
        hidden = encoder(tokens.input_ids.to(encoder.device), attention_mask=tokenizer_mask)[0]
        hidden = hidden.to(encoder.dtype)
        return Conditioning({"prompt_embeds": hidden, "mask": text_mask(tokenizer_mask, hidden.dtype)})

    def enable_gradient_checkpointing(self, denoiser: torch.nn.Module) -> None:
        for block in repeated_blocks(denoiser, self.repeated_block_names()):
            block.forward = functools.partial(_checkpointed, block.forward)

    def predict(
        self,
        denoiser: torch.nn.Module,
        noisy: torch.Tensor,
        levels: torch.Tensor,
        conditioning: Conditioning,
        geometry: ImageGeometry,
    ) -> torch.Tensor:
        """Velocity (noise - latents) for `noisy` (2B, 16, h, w) at sigmas `levels` (2B,), as one call
        of ChromaPipeline's denoising loop makes it."""
        embeds = conditioning["prompt_embeds"]
        height, width = noisy.shape[-2], noisy.shape[-1]
        image_tokens = (height // 2) * (width // 2)
        packed = denoiser(
            hidden_states=pack_latents(noisy),
            timestep=levels.to(noisy.dtype),
            encoder_hidden_states=embeds,
            txt_ids=embeds.new_zeros((embeds.shape[1], 3)),
            img_ids=image_ids(height // 2, width // 2, device=noisy.device, dtype=noisy.dtype),
            attention_mask=joint_mask(conditioning["mask"].to(noisy.dtype), image_tokens),
            return_dict=False,
        )[0]
        return unpack_latents(packed, height, width)

    def pipeline_latents(self, latents: torch.Tensor, resolution: int) -> torch.Tensor:
        """The pipeline's packed (B, tokens, 64) latents -> (B, 16, h, w)."""
        size = 2 * (resolution // (self.vae_scale_factor * 2))
        return unpack_latents(latents, size, size)


def text_mask(tokenizer_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, L) tokenizer mask (1 for real tokens) -> (N, L) float 0/1 mask in `dtype` that keeps the real
    tokens and the first padding token (all L when the prompt fills them), as ChromaPipeline builds it."""
    real = tokenizer_mask.sum(dim=1, keepdim=True)
    positions = torch.arange(tokenizer_mask.shape[1], device=tokenizer_mask.device)[None, :]
    return (positions <= real).to(dtype)


def joint_mask(text: torch.Tensor, image_tokens: int) -> torch.Tensor:
    """(N, L) float text mask -> (N, L + image_tokens), ones for the image tokens, in the text mask's
    dtype (ChromaPipeline._prepare_attention_mask: cat of the float mask and bool ones promotes so)."""
    ones = text.new_ones((text.shape[0], image_tokens))
    return torch.cat([text, ones], dim=1)


def _checkpointed(forward: Any, *args: Any, **kwargs: Any) -> Any:
    """`forward(*args, **kwargs)`, its activations recomputed in the backward pass when gradients are on."""
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)

"""Qwen-Image and Qwen-Image-2512: a 60-block double-stream (MMDiT-like) rectified-flow transformer over
2x2-packed 16-channel latents of a video VAE, conditioned on Qwen2.5-VL-7B's last hidden states.

Facts followed (diffusers 0.42's `QwenImagePipeline`, pipelines/qwenimage/pipeline_qwenimage.py):
- Text (`_get_qwen_prompt_embeds`, `encode_prompt`): each prompt is put in `prompt_template_encode`
  (PROMPT_TEMPLATE), tokenized with padding to the batch's longest and max_length 1024 + 34, run through
  the text encoder with output_hidden_states; `hidden_states[-1]` (after the final norm) is taken, each
  row's valid tokens kept, the first 34 (`prompt_template_encode_start_idx`: the system block and
  `<|im_start|>user\\n`) dropped, the rows re-padded with zeros and truncated to `max_sequence_length`,
  512 by default in `__call__`. We pad every prompt to 512 so conditioning caches and batches, with a
  (N, 512) mask; `predict` cuts the batch back to its longest prompt and passes mask None when nothing
  is padded, which is what `encode_prompt` hands the transformer for the same prompts. The transformer
  masks padding out of its attention, so the padded length changes nothing it computes: the family has no
  `default_text_length` for pre-training to adapt to.
- Latents: the VAE (`AutoencoderKLQwenImage`) takes (B, 3, T=1, H, W) and gives (B, 16, 1, H/8, W/8);
  the pipeline normalises per channel, (z - latents_mean) / latents_std (`_encode_vae_image` of the
  img2img pipeline; the inverse before `vae.decode`, whose output is taken at frame 0). We keep the frame
  axis out: latents are (B, 16, h, w) and `encode_pixels`/`decode_latents` add and drop it.
- Packing (`_pack_latents`): 2x2 patches in raster order, (c, dy, dx) inside a token, as FLUX packs; the
  transformer takes `img_shapes=[[(1, h/2, w/2)]] * B` for its RoPE.
- Transformer call (the denoising loop): timestep = t / 1000 = sigma, guidance None (no shipped
  checkpoint has `guidance_embeds`), prediction = velocity noise - x0.
- Schedule (`calculate_shift`, FlowMatchEulerDiscreteScheduler): dynamic shifting with
  mu = linear in the image's token count (base 256 -> 0.5, max 8192 -> 0.9, from the scheduler config)
  and the exponential shift e^mu / (e^mu + 1/s - 1). Training sigmas get the same mu (FlowFamily).
  The config's `shift_terminal: 0.02` is not applied in training: it stretches a finite inference grid
  (`linspace(1, 1/N, N)` after the shift) so that its last sigma is 0.02, and so depends on the step
  count N; training draws sigmas over all of (0, 1], which covers every grid the sampler uses.
- Guidance is true CFG, which the pipeline runs only with `true_cfg_scale > 1` AND a negative prompt;
  with its defaults (true_cfg_scale 4.0, negative_prompt None) it does not guide, and `guidance_scale`
  only feeds guidance-distilled transformers (`guidance_embeds`, which no released checkpoint has). So a
  default call draws unguided, and so do validation images: `sampling_arguments` passes guidance_scale
  only to a guidance-distilled model, and a validation image is exactly
  `pipe(prompt=p, height=R, width=R, num_inference_steps=n, generator=Generator("cpu").manual_seed(s))`
  (validation's guidance_scale changes nothing for these models). A user may still guide as Qwen documents
  (`true_cfg_scale=4.0, negative_prompt=" "`); `unconditional` is that " " prompt's conditioning.
- The last block's text-stream output is discarded by the transformer (only the image tokens reach
  `norm_out`), so a LoRA on that block's `to_add_out` gets no gradient and stays at its init (B = 0):
  harmless dead weight, kept so the default targets are the same names in every block.
- LoRA: `QwenImageLoraLoaderMixin` (transformer only). The ComfyUI file uses `diffusion_model.<module>`
  keys with lora_down/lora_up and a per-module alpha: ComfyUI's Qwen-Image model keeps the diffusers
  module names, and diffusers reads that layout back (`_convert_non_diffusers_qwen_lora_to_diffusers`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

from trainer.families import FamilyName
from trainer.families.base import Conditioning, ImageGeometry
from trainer.families.flow import FlowFamily
from trainer.families.flux import pack_latents, unpack_latents
from trainer.families.loading import Loading

# QwenImagePipeline.__init__: prompt_template_encode and prompt_template_encode_start_idx.
PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
TEMPLATE_DROP = 34
TOKENIZER_MAX_LENGTH = 1024  # QwenImagePipeline.tokenizer_max_length
MAX_SEQUENCE_LENGTH = 512  # QwenImagePipeline.__call__'s default max_sequence_length
NEGATIVE_PROMPT = " "  # the negative prompt of Qwen's documented true-CFG usage
COMFY_PREFIX = "diffusion_model."
COMFY_SUFFIXES = {".lora_A.weight": ".lora_down.weight", ".lora_B.weight": ".lora_up.weight"}


class QwenImageFamily(FlowFamily):
    name: ClassVar[FamilyName] = "qwen_image"
    denoiser_class: ClassVar[Any] = QwenImageTransformer2DModel
    scheduler_class: ClassVar[Any] = FlowMatchEulerDiscreteScheduler
    vae_class: ClassVar[Any] = AutoencoderKLQwenImage
    # QwenDoubleStreamAttnProcessor2_0 calls SDPA through diffusers' dispatcher (native backend).
    sdpa_processors: ClassVar[tuple[str, ...]] = ("2_0",)

    def discarded_modules(self) -> list[str]:
        # The last block computes its text stream's attention output and the model drops it.
        last = len(self.denoiser.transformer_blocks) - 1
        return [f"transformer_blocks.{last}.attn.to_add_out"]

    @classmethod
    def load_text_stack(cls, loading: Loading, *, options: dict[str, Any]) -> tuple[list[Any], list[Any]]:
        encoder = loading.text_encoder(Qwen2_5_VLForConditionalGeneration, "text_encoder")
        return [encoder], [Qwen2Tokenizer.from_pretrained(loading.source, subfolder="tokenizer")]

    @property
    def vae_scale_factor(self) -> int:
        """8: the pipeline's 2 ** len(temperal_downsample), whose length counts the spatial downsamples."""
        return int(2 ** len(self.vae.config.temperal_downsample))

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.z_dim)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """prompt_embeds (N, 512, D) zero-padded, prompt_mask (N, 512) long: 1 on each prompt's tokens."""
        encoder, tokenizer = self.text_encoders[0], self.tokenizers[0]
        tokens = tokenizer(
            [PROMPT_TEMPLATE.format(p) for p in prompts],
            max_length=TOKENIZER_MAX_LENGTH + TEMPLATE_DROP,
            padding=True,
            truncation=True,
            return_tensors="pt",
        ).to(encoder.device)
        out = encoder(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, output_hidden_states=True
        )
        hidden, valid = out.hidden_states[-1], tokens.attention_mask.bool()
        embeds = hidden.new_zeros(len(prompts), MAX_SEQUENCE_LENGTH, hidden.shape[-1])
        mask = torch.zeros(len(prompts), MAX_SEQUENCE_LENGTH, dtype=torch.long, device=hidden.device)
        for row in range(len(prompts)):
            kept = hidden[row][valid[row]][TEMPLATE_DROP:][:MAX_SEQUENCE_LENGTH]
            embeds[row, : len(kept)] = kept
            mask[row, : len(kept)] = 1
        return Conditioning({"prompt_embeds": embeds.to(encoder.dtype), "prompt_mask": mask})

    def unconditional(self, num: int) -> Conditioning:
        """The conditioning of " ", the negative prompt Qwen's documented true CFG guides against, `num`
        times (the pipeline's default call does not guide at all)."""
        return self.encode_prompts([NEGATIVE_PROMPT]).repeat(num)

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, R, R) in [-1, 1] -> posterior mean and std, each (N, 16, R/8, R/8), float32: the video
        VAE is given one frame, (N, 3, 1, R, R), and its frame axis is dropped."""
        dist = self.vae.encode(pixels.to(self.vae.device, torch.float32).unsqueeze(2)).latent_dist
        return dist.mean[:, :, 0], dist.std[:, :, 0]

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, 16, h, w) normalised latents -> (N, 3, 8h, 8w) pixels in [-1, 1] (the VAE clamps them)."""
        sample = self.from_latents(latents.to(self.vae.device, torch.float32)).unsqueeze(2)
        decoded: torch.Tensor = self.vae.decode(sample).sample[:, :, 0]
        return decoded

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """latents_mean and latents_std of the VAE config shaped (C, 1, 1), on `like`'s device/dtype."""
        config = self.vae.config
        mean = torch.tensor(config.latents_mean, device=like.device, dtype=like.dtype)
        std = torch.tensor(config.latents_std, device=like.device, dtype=like.dtype)
        return mean.view(-1, 1, 1), std.view(-1, 1, 1)

    def to_latents(self, sample: torch.Tensor) -> torch.Tensor:
        """(..., 16, h, w) VAE sample -> (sample - latents_mean) / latents_std, per channel."""
        mean, std = self._latent_stats(sample)
        return (sample - mean) / std

    def from_latents(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._latent_stats(latents)
        return latents * std + mean

    def predict(
        self,
        denoiser: torch.nn.Module,
        noisy: torch.Tensor,
        levels: torch.Tensor,
        conditioning: Conditioning,
        geometry: ImageGeometry,
    ) -> torch.Tensor:
        """Velocity for `noisy` (B, 16, h, w), called as the pipeline's denoising loop calls the model."""
        embeds, mask = pipeline_text(conditioning["prompt_embeds"], conditioning["prompt_mask"])
        height, width = noisy.shape[-2:]
        packed = denoiser(
            hidden_states=pack_latents(noisy),
            timestep=levels.to(noisy.dtype),
            guidance=None,
            encoder_hidden_states_mask=mask,
            encoder_hidden_states=embeds,
            img_shapes=[[(1, height // 2, width // 2)]] * len(noisy),
            return_dict=False,
        )[0]
        return unpack_latents(packed, height, width)

    def sampling_arguments(self, guidance_scale: float) -> dict[str, Any]:
        """Nothing but a guidance-distilled model's guidance: the pipeline's default call does not guide
        (module docstring), and validation images are that call."""
        return {"guidance_scale": guidance_scale} if self.denoiser.config.guidance_embeds else {}

    def guides_against_negative(self, guidance_scale: float) -> bool:
        """Never: `sampling_arguments` asks for no true CFG (module docstring), and a negative's
        embeddings alone would turn it on at the pipeline's default true_cfg_scale of 4."""
        return False

    def pipeline_embeddings(
        self, conditioning: Conditioning, negative: Conditioning | None
    ) -> dict[str, Any]:
        """Embeddings and mask cut to the longest prompt, as `encode_prompt` gives them (the pipeline
        itself drops a mask that masks nothing). No negative: these calls never guide (above)."""
        kept = conditioning["prompt_mask"] > 0
        longest = int(kept.sum(dim=1).max())
        return {
            "prompt_embeds": conditioning["prompt_embeds"][:, :longest],
            "prompt_embeds_mask": kept[:, :longest].long(),
        }

    def pipeline_latents(self, latents: torch.Tensor, resolution: int) -> torch.Tensor:
        """The pipeline's packed (B, N, 64) output -> (B, 16, h, w)."""
        size = 2 * (resolution // (self.vae_scale_factor * 2))
        return unpack_latents(latents, size, size)

    def kohya_state(self, state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
        """ComfyUI's Qwen-Image layout: diffusion_model.<module>.lora_down/.lora_up.weight and .alpha."""
        out: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            module, comfy_suffix = _comfy_name(key.removeprefix("transformer."))
            out[module + comfy_suffix] = value
            out[module + ".alpha"] = torch.tensor(float(alpha))
        return out


def _comfy_name(key: str) -> tuple[str, str]:
    """peft's `<module>.lora_A.weight` / `.lora_B.weight` -> (`diffusion_model.<module>`, ComfyUI suffix)."""
    for peft_suffix, comfy_suffix in COMFY_SUFFIXES.items():
        if key.endswith(peft_suffix):
            return COMFY_PREFIX + key.removesuffix(peft_suffix), comfy_suffix
    raise KeyError(f"not a peft LoRA weight key: {key!r}")


def pipeline_text(embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Padded (N, L, D) embeds and (N, L) mask -> what `encode_prompt` gives the transformer for the
    same prompts: cut to the longest prompt, and the mask (long) only where some prompt is padded."""
    lengths = (mask > 0).sum(dim=1)
    shortest, longest = torch.stack([lengths.min(), lengths.max()]).tolist()
    if shortest == longest:
        return embeds[:, :longest], None
    return embeds[:, :longest], (mask[:, :longest] > 0).long()

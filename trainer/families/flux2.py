"""FLUX.2 [klein] (`Flux2KleinPipeline`, Qwen3 text encoder) and [dev] (`Flux2Pipeline`, Mistral-3): a
rectified-flow transformer over 2x2-patchified, batch-norm-normalised 32-channel latents.

The facts, from diffusers 0.42's pipelines/flux2/pipeline_flux2_klein.py (K) and pipeline_flux2.py (D):
* Latents. `AutoencoderKLFlux2` encodes to (32, H/8, W/8). The pipelines patchify 2x2 into 128 channels
  (channel c*4 + dy*2 + dx, `_patchify_latents`) and normalise per channel with the VAE's batch-norm
  running statistics, (z - running_mean) / sqrt(running_var + batch_norm_eps) (K:__call__'s end, the
  inverse). So `to_latents` does both and the denoiser's latents are (N, 128, H/16, W/16):
  `vae_scale_factor` is 16 and `latent_channels` 128 here. Tokens are those latents row-major,
  (N, h*w, 128) (`_pack_latents`), with 4-axis position ids (t=0, row, column, l=0) (`_prepare_latent_ids`).
* Text. klein: each prompt goes through Qwen3's chat template (one user turn, generation prompt,
  enable_thinking=False), is padded to max_sequence_length = 512 tokens, and the text encoder's
  hidden_states 9, 18 and 27 are concatenated per token into (N, 512, 3 x hidden)
  (K:_get_qwen3_prompt_embeds).
  dev: a system message plus the prompt through the Mistral-3 processor's chat template, layers 10, 20, 30
  (D:_get_mistral_3_small_prompt_embeds). The attention mask reaches only the text encoder: the transformer
  attends to all 512 positions, padding included, so every prompt's conditioning is that fixed shape and no
  mask is carried. Text ids are (0, 0, 0, l) for l = 0..511 (`_prepare_text_ids`).
* Call. `transformer(hidden_states=tokens, timestep=sigma, guidance=..., encoder_hidden_states=embeds,
  txt_ids, img_ids)`, which predicts the velocity noise - x0 (the scheduler steps x + (s' - s) v). klein has
  no guidance embedding (guidance=None) and samples with real classifier-free guidance against "" at
  guidance_scale 4.0 unless its model_index says is_distilled; dev is guidance-distilled and takes the
  guidance value as an input: 4.0 by default, the pipeline's, or the spec's `guidance`.
* Shift. The scheduler uses dynamic shifting with mu = `compute_empirical_mu(image_seq_len, num_steps)`
  (K:63), which depends on the step count too. Training shifts with mu at the pipeline's default
  num_inference_steps, 50 (REFERENCE_STEPS): the schedule a default call samples with at that image size.
  (diffusers' train_dreambooth_lora_flux2*.py draw from the unshifted table instead.)
* Sampling output. klein's output_type="latent" gives the de-normalised, unpatchified VAE latents
  (N, 32, H/8, W/8); dev's gives the packed normalised tokens. `pipeline_latents` maps both back.
* LoRA. diffusers' `Flux2LoraLoaderMixin` files; `kohya_state` writes the BFL / ai-toolkit layout
  (`diffusion_model.double_blocks.i.img_attn.qkv...`, `single_blocks.i.linear1`), which ComfyUI loads for
  FLUX.2 and diffusers' `_convert_non_diffusers_flux2_lora_to_diffusers` reads back.
"""

from __future__ import annotations

from functools import cache
from typing import Any, ClassVar

import torch
from diffusers import (
    AutoencoderKLFlux2,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    Flux2Transformer2DModel,
)
from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
from transformers import AutoProcessor, AutoTokenizer, Mistral3ForConditionalGeneration, Qwen3ForCausalLM

from trainer.families import FamilyName
from trainer.families.base import Conditioning, ImageGeometry
from trainer.families.flow import FlowFamily, sigmas_at
from trainer.families.loading import Loading

MAX_SEQUENCE_LENGTH = 512  # both pipelines' default max_sequence_length
KLEIN_TEXT_LAYERS = (9, 18, 27)
DEV_TEXT_LAYERS = (10, 20, 30)
DEV_PIPELINE = "Flux2Pipeline"
DEFAULT_GUIDANCE = 4.0  # Flux2Pipeline.__call__'s guidance_scale (dev's embedded guidance)
REFERENCE_STEPS = 50  # both pipelines' default num_inference_steps, for compute_empirical_mu
PATCH = 2  # the pipelines' _patchify_latents
# FLUX.2 [dev] has 48 single-stream blocks, klein-4B 20, klein-9B 24: names of blocks a model lacks match
# nothing. Single blocks' `attn.to_out` must be named per block: in double blocks `to_out` is a ModuleList.
MAX_SINGLE_BLOCKS = 48
DOUBLE_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
SINGLE_TARGETS = (
    "to_qkv_mlp_proj",
    *(f"single_transformer_blocks.{i}.attn.to_out" for i in range(MAX_SINGLE_BLOCKS)),
)


class Flux2Family(FlowFamily):
    name: ClassVar[FamilyName] = "flux2"
    denoiser_class: ClassVar[Any] = Flux2Transformer2DModel
    scheduler_class: ClassVar[Any] = FlowMatchEulerDiscreteScheduler
    vae_class: ClassVar[Any] = AutoencoderKLFlux2
    # Every attention projection: both streams of the double blocks, and the single blocks' fused
    # qkv+MLP input and output (diffusers' klein script targets to_q/k/v, to_out.0 and the single blocks).
    default_lora_targets: ClassVar[tuple[str, ...]] = DOUBLE_TARGETS + SINGLE_TARGETS
    default_text_length: ClassVar[int | None] = MAX_SEQUENCE_LENGTH
    # All call torch's SDPA through diffusers' attention dispatcher (its default "native" backend).
    sdpa_processors: ClassVar[tuple[str, ...]] = (
        "Flux2AttnProcessor",
        "Flux2ParallelSelfAttnProcessor",
        "Flux2KVAttnProcessor",
        "Flux2KVParallelSelfAttnProcessor",
    )

    def __init__(self, *, options: dict[str, Any], **components: Any) -> None:
        super().__init__(options=options, **components)
        self.dev = pipeline_class_of(self.source) == DEV_PIPELINE
        guidance = options.get("guidance")
        self.guidance = DEFAULT_GUIDANCE if guidance is None else float(guidance)

    @classmethod
    def load_text_stack(cls, loading: Loading, *, options: dict[str, Any]) -> tuple[list[Any], list[Any]]:
        source = loading.source
        if pipeline_class_of(source) == DEV_PIPELINE:
            encoder = loading.text_encoder(Mistral3ForConditionalGeneration, "text_encoder")
            return [encoder], [AutoProcessor.from_pretrained(source, subfolder="tokenizer")]
        encoder = loading.text_encoder(Qwen3ForCausalLM, "text_encoder")
        return [encoder], [AutoTokenizer.from_pretrained(source, subfolder="tokenizer")]

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell: the VAE's 8, times the 2x2 patches."""
        return PATCH * int(2 ** (len(self.vae.config.block_out_channels) - 1))

    @property
    def latent_channels(self) -> int:
        return PATCH * PATCH * int(self.vae.config.latent_channels)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """prompt_embeds (N, 512, 3 x hidden) in the text encoder's dtype, as the pipeline's encode_prompt."""
        encoder, tokenizer = self.text_encoders[0], self.tokenizers[0]
        if self.dev:
            inputs = mistral_inputs(tokenizer, prompts, self.padded_length())
            layers = DEV_TEXT_LAYERS
        else:
            inputs = qwen_inputs(tokenizer, prompts, self.padded_length())
            layers = KLEIN_TEXT_LAYERS
        hidden = encoder(
            input_ids=inputs["input_ids"].to(encoder.device),
            attention_mask=inputs["attention_mask"].to(encoder.device),
            output_hidden_states=True,
            use_cache=False,
        ).hidden_states
        embeds = torch.cat([hidden[k] for k in layers], dim=-1).to(encoder.dtype)
        return Conditioning({"prompt_embeds": embeds})

    def to_latents(self, sample: torch.Tensor) -> torch.Tensor:
        """VAE latents (..., 32, H/8, W/8), any leading dims -> (..., 128, H/16, W/16), normalised."""
        mean, std = self._bn_statistics(sample)
        return (patchify(sample) - mean) / std

    def from_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of `to_latents`: (..., 128, h, w) -> the VAE decoder's (..., 32, 2h, 2w)."""
        mean, std = self._bn_statistics(latents)
        return unpatchify(latents * std + mean)

    def _bn_statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(128, 1, 1) mean and std = sqrt(running_var + eps) on `like`'s device and dtype, as the
        pipelines compute them (in the buffers' float32, then cast)."""
        bn = self.vae.bn
        std = torch.sqrt(bn.running_var + self.vae.config.batch_norm_eps)
        return (
            bn.running_mean.to(like.device, like.dtype).view(-1, 1, 1),
            std.to(like.device, like.dtype).view(-1, 1, 1),
        )

    def shift_mu(self, latents: torch.Tensor) -> float | None:
        """mu = compute_empirical_mu(tokens, 50) for latents (..., 128, h, w), h*w tokens."""
        return empirical_mu(latents.shape[-2] * latents.shape[-1], REFERENCE_STEPS)

    def sigmas(self, u: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return sigmas_at(
            u, num_train_timesteps=self.num_train_timesteps, shift=1.0, mu=self.shift_mu(latents)
        )

    def predict(
        self,
        denoiser: torch.nn.Module,
        noisy: torch.Tensor,
        levels: torch.Tensor,
        conditioning: Conditioning,
        geometry: ImageGeometry,
    ) -> torch.Tensor:
        """The velocity for noisy (N, 128, h, w), same shape, called as the pipelines' denoising step."""
        n, channels, height, width = noisy.shape
        embeds = conditioning["prompt_embeds"]
        guidance = None
        if self.dev:
            guidance = torch.full((n,), self.guidance, device=noisy.device, dtype=torch.float32)
        tokens: torch.Tensor = denoiser(
            hidden_states=noisy.flatten(2).transpose(1, 2),
            timestep=levels.to(noisy.dtype),
            guidance=guidance,
            encoder_hidden_states=embeds,
            txt_ids=text_ids(embeds.shape[1], device=noisy.device),
            img_ids=image_ids(height, width, device=noisy.device),
            return_dict=False,
        )[0]
        return tokens[:, : height * width].transpose(1, 2).reshape(n, channels, height, width)

    def guides_against_negative(self, guidance_scale: float) -> bool:
        """klein guides against "" above 1 (its pipeline ignores the negative when is_distilled); dev's
        pipeline has no negative prompt: its guidance is an input of the transformer."""
        return not self.dev and guidance_scale > 1.0

    def pipeline_latents(self, latents: torch.Tensor, resolution: int) -> torch.Tensor:
        """klein's latent output is the VAE's (N, 32, H/8, W/8); dev's the tokens (N, h*w, 128)."""
        if not self.dev:
            return self.to_latents(latents)
        side = resolution // self.vae_scale_factor
        return latents.transpose(1, 2).reshape(len(latents), -1, side, side)

    def kohya_state(self, state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
        """The BFL layout ComfyUI loads for FLUX.2 (see `to_bfl`), with alpha / rank baked into B."""
        rank = next(v.shape[0] for k, v in state.items() if k.endswith("lora_A.weight"))
        return to_bfl(state, scale=alpha / rank)


@cache
def pipeline_class_of(source: str) -> str:
    """The pipeline class `source`'s model_index.json names: which FLUX.2 this is."""
    return str(DiffusionPipeline.load_config(source)["_class_name"])


def qwen_inputs(tokenizer: Any, prompts: list[str], length: int) -> dict[str, torch.Tensor]:
    """klein's tokens: Qwen3's chat template around each prompt, (N, length) ids and mask."""
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,
        )
        for prompt in prompts
    ]
    inputs: dict[str, torch.Tensor] = tokenizer(
        texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt"
    )
    return inputs


def mistral_inputs(processor: Any, prompts: list[str], length: int) -> dict[str, torch.Tensor]:
    """dev's tokens: the system message and the prompt (without "[IMG]") through the processor's chat
    template, (N, length) ids and mask."""
    conversations = [
        [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM_MESSAGE}]},
            {"role": "user", "content": [{"type": "text", "text": prompt.replace("[IMG]", "")}]},
        ]
        for prompt in prompts
    ]
    inputs: dict[str, torch.Tensor] = processor.apply_chat_template(
        conversations,
        add_generation_prompt=False,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        padding="max_length",
        truncation=True,
        max_length=length,
    )
    return inputs


def empirical_mu(image_seq_len: int, num_steps: int) -> float:
    """FLUX.2's shift mu (K:compute_empirical_mu): two linear fits in the token count, for 10 and 200
    steps, interpolated (or extrapolated) linearly in the step count; above 4300 tokens the 200-step fit."""
    a1, b1 = 8.73809524e-05, 1.89833333
    a2, b2 = 0.00016927, 0.45666666
    mu_200 = a2 * image_seq_len + b2
    if image_seq_len > 4300:
        return float(mu_200)
    mu_10 = a1 * image_seq_len + b1
    slope = (mu_200 - mu_10) / 190.0
    return float(mu_200 + slope * (num_steps - 200))


def patchify(latents: torch.Tensor) -> torch.Tensor:
    """(..., C, H, W) -> (..., 4C, H/2, W/2); channel c*4 + dy*2 + dx holds pixel (2y + dy, 2x + dx)."""
    *lead, c, h, w = latents.shape
    grid = latents.reshape(-1, c, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 1, 3, 5, 2, 4)
    return grid.reshape(*lead, c * PATCH * PATCH, h // PATCH, w // PATCH)


def unpatchify(latents: torch.Tensor) -> torch.Tensor:
    """Inverse of `patchify`: (..., 4C, h, w) -> (..., C, 2h, 2w)."""
    *lead, c4, h, w = latents.shape
    grid = latents.reshape(-1, c4 // (PATCH * PATCH), PATCH, PATCH, h, w).permute(0, 1, 4, 2, 5, 3)
    return grid.reshape(*lead, c4 // (PATCH * PATCH), h * PATCH, w * PATCH)


def image_ids(rows: int, cols: int, *, device: torch.device) -> torch.Tensor:
    """(rows * cols, 4) int64 position ids of the image tokens: (0, row, column, 0), row-major."""
    ids = torch.zeros(rows, cols, 4, dtype=torch.long, device=device)
    ids[..., 1] = torch.arange(rows, device=device)[:, None]
    ids[..., 2] = torch.arange(cols, device=device)[None, :]
    return ids.reshape(rows * cols, 4)


def text_ids(length: int, *, device: torch.device) -> torch.Tensor:
    """(length, 4) int64 position ids of the text tokens: (0, 0, 0, l)."""
    ids = torch.zeros(length, 4, dtype=torch.long, device=device)
    ids[:, 3] = torch.arange(length, device=device)
    return ids


# The BFL names of the adapted modules, per diffusers name within a block (and the fused q/k/v).
BFL_DOUBLE = {
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
    "ff.linear_in": "img_mlp.0",
    "ff.linear_out": "img_mlp.2",
    "ff_context.linear_in": "txt_mlp.0",
    "ff_context.linear_out": "txt_mlp.2",
}
BFL_FUSED = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
BFL_SINGLE = {"attn.to_qkv_mlp_proj": "linear1", "attn.to_out": "linear2"}
BFL_PREFIX = "diffusion_model."


def to_bfl(state: dict[str, torch.Tensor], *, scale: float) -> dict[str, torch.Tensor]:
    """diffusers-named LoRA weights (`<module>.lora_A.weight`, no component prefix) -> BFL names
    (`diffusion_model.double_blocks.i.img_attn.qkv.lora_A.weight`, ...), `scale` = alpha / rank baked
    into B, no alpha keys (diffusers' converter takes none; ComfyUI then scales by 1).

    BFL fuses q, k and v into one `qkv` linear: their LoRAs become one of rank 3r, exactly, with
    A = [A_q; A_k; A_v] and B block-diagonal (a missing one of the three is zeros). Raises on a module
    the layout has no name for."""
    blocks = _by_block(state)
    out: dict[str, torch.Tensor] = {}
    for (kind, index), modules in sorted(blocks.items()):
        if kind == "single_transformer_blocks":
            for module, (a, b) in modules.items():
                out |= _bfl_pair(f"single_blocks.{index}.{_bfl_name(BFL_SINGLE, module)}", a, b * scale)
            continue
        for fused, parts in BFL_FUSED.items():
            if any(part in modules for part in parts):
                a, b = _fuse([modules.pop(part, None) for part in parts])
                out |= _bfl_pair(f"double_blocks.{index}.{fused}", a, b * scale)
        for module, (a, b) in modules.items():
            out |= _bfl_pair(f"double_blocks.{index}.{_bfl_name(BFL_DOUBLE, module)}", a, b * scale)
    return out


Pair = tuple[torch.Tensor, torch.Tensor]


def _by_block(state: dict[str, torch.Tensor]) -> dict[tuple[str, int], dict[str, Pair]]:
    """{(block list, index): {module within the block: (A, B)}}."""
    blocks: dict[tuple[str, int], dict[str, Pair]] = {}
    for key, a in state.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removesuffix(".lora_A.weight")
        kind, index, inner = module.split(".", 2)
        if kind not in ("transformer_blocks", "single_transformer_blocks"):
            raise ValueError(f"the BFL LoRA layout has no name for {module}")
        blocks.setdefault((kind, int(index)), {})[inner] = (a, state[module + ".lora_B.weight"])
    return blocks


def _bfl_name(names: dict[str, str], module: str) -> str:
    if module not in names:
        raise ValueError(f"the BFL LoRA layout has no name for {module}")
    return names[module]


def _fuse(parts: list[Pair | None]) -> Pair:
    """One LoRA for the concatenated outputs of three: A stacked, B block-diagonal."""
    present = [p for p in parts if p is not None]
    rank, fan_in = present[0][0].shape
    fan_out = present[0][1].shape[0]
    a = present[0][0].new_zeros(3 * rank, fan_in)
    b = present[0][1].new_zeros(3 * fan_out, 3 * rank)
    for j, part in enumerate(parts):
        if part is not None:
            a[j * rank : (j + 1) * rank] = part[0]
            b[j * fan_out : (j + 1) * fan_out, j * rank : (j + 1) * rank] = part[1]
    return a, b


def _bfl_pair(name: str, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        f"{BFL_PREFIX}{name}.lora_A.weight": a.contiguous(),
        f"{BFL_PREFIX}{name}.lora_B.weight": b.contiguous(),
    }

"""Z-Image (Tongyi-MAI Z-Image and Z-Image-Turbo): a single-stream flow-matching transformer over
FLUX.1-VAE latents, conditioned on a Qwen3 decoder's hidden states.

The facts follow diffusers 0.42's `ZImagePipeline` (pipelines/z_image/pipeline_z_image.py):

- Text (`_encode_prompt`): each prompt goes through the tokenizer's chat template as one user turn with
  `add_generation_prompt=True, enable_thinking=True`, is padded and truncated to `max_sequence_length`
  (default 512, template included), and the Qwen3 encoder's second-to-last hidden state
  (`hidden_states[-2]`) is taken at the attention mask's positions, giving one variable-length (L_i, D)
  tensor per prompt. We keep them padded to 512 with a 0/1 `prompt_mask`, so they batch and cache, and
  `predict` removes the padding again. The encoder is causal and pads on the right, so the kept rows are
  the pipeline's exactly.
- Latents (`prepare_latents`, the decode at the end of `__call__`): (B, 16, H/8, W/8), unpacked,
  normalised as (sample - shift_factor) * scaling_factor; H and W must be multiples of 16.
- The transformer call (the denoising loop): a list of (C, 1, h, w) latents, `timestep = (1000 - t) /
  1000` with t = 1000 sigma (so 1 - sigma: 0 is pure noise), and the list of caption embeddings; it
  returns a list of (C, 1, h, w). The pipeline negates that output before `scheduler.step`, so `predict`
  returns the negated output, whose flow-matching target is noise - latents (as diffusers'
  train_dreambooth_lora_z_image.py trains it).
- Noise levels (steps 5-6, `FlowMatchEulerDiscreteScheduler.set_timesteps`): the pipeline computes a
  `mu` but Z-Image's schedulers have `use_dynamic_shifting: false`, so only the static shift applies
  (Turbo 3, base 6), which FlowFamily's training sigmas apply too.
- Guidance: `do_classifier_free_guidance` is `guidance_scale > 0`, with `pos + g (pos - neg)` on the raw
  outputs and the negative prompt "" through the same template, which is `unconditional`'s default.
  The pipeline's default g is 5.0 (Turbo is meant to be drawn with 0.0).
- LoRA (`ZImageLoraLoaderMixin`): transformer only; diffusers' script adapts the attention projections
  to_q/to_k/to_v/to_out.0 of every block (the main layers and both refiners).

ComfyUI runs Z-Image on its own module names (Lumina2's NextDiT: fused `attention.qkv`, `attention.out`,
`x_embedder`, `final_layer`) under `diffusion_model.`; `kohya_state` writes that layout with the
`.lora.down/.lora.up/.alpha` suffixes ComfyUI reads, q/k/v fused into one qkv adapter of three times the
rank. diffusers' `_convert_non_diffusers_z_image_lora_to_diffusers` reads it back (it splits qkv only in
this dotted naming, not in kohya's `.lora_down`). It does not map `x_embedder`/`final_layer` back to
diffusers' `all_x_embedder.2-1`/`all_final_layer.2-1`, so an adapter on those (no default target) loads
in ComfyUI but not through diffusers' converter.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
from transformers import Qwen2Tokenizer, Qwen3Model

from trainer.families import FamilyName
from trainer.families.base import Conditioning, ImageGeometry
from trainer.families.flow import FlowFamily
from trainer.families.loading import Loading

MAX_SEQUENCE_LENGTH = 512  # ZImagePipeline's default max_sequence_length
COMFY_PREFIX = "diffusion_model."
QKV = ("to_q", "to_k", "to_v")
# diffusers module names -> ComfyUI's (comfy.utils.z_image_to_diffusers, read in reverse).
COMFY_RENAMES = (
    (".attention.to_out.0", ".attention.out"),
    ("all_x_embedder.2-1.", "x_embedder."),
    ("all_final_layer.2-1.", "final_layer."),
)


class ZImageFamily(FlowFamily):
    name: ClassVar[FamilyName] = "z_image"
    denoiser_class: ClassVar[Any] = ZImageTransformer2DModel
    scheduler_class: ClassVar[Any] = FlowMatchEulerDiscreteScheduler
    # Single-stream attention: no add_*_proj; diffusers' Z-Image script adapts these four.
    default_lora_targets: ClassVar[tuple[str, ...]] = ("to_q", "to_k", "to_v", "to_out.0")
    # Its processor calls diffusers' dispatch_attention_fn, whose default backend is torch's SDPA.
    sdpa_processors: ClassVar[tuple[str, ...]] = ("2_0", "ZSingleStreamAttnProcessor")

    @classmethod
    def load_text_stack(cls, loading: Loading, *, options: dict[str, Any]) -> tuple[list[Any], list[Any]]:
        encoder = loading.text_encoder(Qwen3Model, "text_encoder")
        return [encoder], [Qwen2Tokenizer.from_pretrained(loading.source, subfolder="tokenizer")]

    def chat_texts(self, prompts: list[str]) -> list[str]:
        """The pipeline's template around each prompt (a new list: the pipeline's own overwrites its
        argument in place)."""
        tokenizer = self.tokenizers[0]
        return [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}],
                tokenize=False,
                add_generation_prompt=True,
                enable_thinking=True,
            )
            for prompt in prompts
        ]

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """prompt_embeds (N, 512, D): hidden_states[-2] of the templated prompts, zero past each prompt's
        tokens; prompt_mask (N, 512): 1.0 at the tokens the pipeline keeps, 0.0 at the padding (a float,
        so it survives the engine's cast of every conditioning tensor to the model dtype)."""
        encoder = self.text_encoders[0]
        batch = self.tokenizers[0](
            self.chat_texts(prompts),
            padding="max_length",
            max_length=MAX_SEQUENCE_LENGTH,
            truncation=True,
            return_tensors="pt",
        )
        mask = batch.attention_mask.to(encoder.device).bool()
        hidden = encoder(
            input_ids=batch.input_ids.to(encoder.device), attention_mask=mask, output_hidden_states=True
        ).hidden_states[-2]
        hidden = torch.where(mask[..., None], hidden, torch.zeros_like(hidden))
        return Conditioning({"prompt_embeds": hidden, "prompt_mask": mask.to(hidden.dtype)})

    def predict(
        self,
        denoiser: torch.nn.Module,
        noisy: torch.Tensor,
        levels: torch.Tensor,
        conditioning: Conditioning,
        geometry: ImageGeometry,
    ) -> torch.Tensor:
        """The pipeline's noise_pred before guidance: minus the transformer's output, (2B, C, h, w)."""
        frames = list(noisy.unsqueeze(2).unbind(0))  # (C, 1, h, w) each: one frame
        outputs = denoiser(
            frames,
            self.model_timestep(levels.to(noisy.device)),
            unpad_captions(conditioning["prompt_embeds"], conditioning["prompt_mask"]),
            return_dict=False,
        )[0]
        return -torch.stack(outputs).squeeze(2)

    def guides_against_negative(self, guidance_scale: float) -> bool:
        """ZImagePipeline guides whenever `guidance_scale > 0` (module docstring)."""
        return guidance_scale > 0.0

    def pipeline_embeddings(
        self, conditioning: Conditioning, negative: Conditioning | None
    ) -> dict[str, Any]:
        """The pipeline takes lists of (L_i, D) caption embeddings, each holding only its prompt's tokens."""
        arguments: dict[str, Any] = {"prompt_embeds": _captions(conditioning)}
        if negative is not None:
            arguments["negative_prompt_embeds"] = _captions(negative)
        return arguments

    def model_timestep(self, sigmas: torch.Tensor) -> torch.Tensor:
        """(N,) sigmas -> the transformer's t = (1000 - t_sched) / 1000, t_sched = sigma * 1000, in
        float32 and in the pipeline's order of operations (the model scales t by 1000 again, so a
        rounding difference shows)."""
        scheduler_t = sigmas.float() * self.num_train_timesteps
        return (1000 - scheduler_t) / 1000

    def kohya_state(self, state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
        """`state` in ComfyUI's Z-Image naming: `diffusion_model.<comfy module>.lora.down.weight`,
        `.lora.up.weight` and `.alpha`, each block's q/k/v adapters fused into one `attention.qkv`."""
        pairs = lora_pairs(state)
        fused: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        out: dict[str, torch.Tensor] = {}
        for module, pair in pairs.items():
            block, _, leaf = module.rpartition(".")
            if leaf in QKV and block.endswith("attention"):
                fused.setdefault(block, {})[leaf] = pair
            else:
                out.update(comfy_entries(comfy_name(module), pair, alpha))
        for block, parts in fused.items():
            pair = fuse_qkv(parts, self.qkv_widths())
            # The fused adapter's rank is the parts' ranks summed; scaling its alpha alike keeps
            # alpha / rank, and so each part's update, as trained.
            out.update(comfy_entries(comfy_name(f"{block}.qkv"), pair, alpha * len(parts)))
        return out

    def qkv_widths(self) -> tuple[int, int, int]:
        """Output features of to_q, to_k and to_v: heads and key/value heads times the head size."""
        config = self.denoiser.config
        head = int(config.dim) // int(config.n_heads)
        return int(config.n_heads) * head, int(config.n_kv_heads) * head, int(config.n_kv_heads) * head


def unpad_captions(embeds: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """(N, L, D) padded caption embeddings and their (N, L) 0/1 mask -> the pipeline's list of N
    (L_i, D) tensors holding only each caption's tokens."""
    keep = mask > 0.5
    return [rows[kept] for rows, kept in zip(embeds, keep, strict=True)]


def _captions(conditioning: Conditioning) -> list[torch.Tensor]:
    return unpad_captions(conditioning["prompt_embeds"], conditioning["prompt_mask"])


def lora_pairs(state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """peft's `<module>.lora_A.weight` / `.lora_B.weight` (optionally `transformer.`-prefixed) ->
    {module: (down (r, in), up (out, r))}."""
    plain = {key.removeprefix("transformer."): value for key, value in state.items()}
    return {
        key.removesuffix(".lora_A.weight"): (down, plain[key.replace(".lora_A.", ".lora_B.")])
        for key, down in plain.items()
        if key.endswith(".lora_A.weight")
    }


def fuse_qkv(
    parts: dict[str, tuple[torch.Tensor, torch.Tensor]], widths: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One adapter for the fused qkv linear from q/k/v adapters (any of them may be absent): the downs
    stacked (sum r, in) and the ups placed block-diagonally (q_out + k_out + v_out, sum r), so that
    up @ down is [up_q down_q; up_k down_k; up_v down_v] with zero rows for an absent projection."""
    downs = [parts[name][0] for name in QKV if name in parts]
    down = torch.cat(downs)
    up = down.new_zeros((sum(widths), down.shape[0]))
    row = column = 0
    for name, width in zip(QKV, widths, strict=True):
        if name in parts:
            part_up = parts[name][1]
            up[row : row + width, column : column + part_up.shape[1]] = part_up
            column += part_up.shape[1]
        row += width
    return down, up


def comfy_name(module: str) -> str:
    """A diffusers module name of the Z-Image transformer -> ComfyUI's, `diffusion_model.`-prefixed."""
    for diffusers_name, comfy in COMFY_RENAMES:
        module = module.replace(diffusers_name, comfy)
    return COMFY_PREFIX + module


def comfy_entries(
    name: str, pair: tuple[torch.Tensor, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    down, up = pair
    return {
        f"{name}.lora.down.weight": down.contiguous(),
        f"{name}.lora.up.weight": up.contiguous(),
        f"{name}.alpha": torch.tensor(float(alpha)),
    }

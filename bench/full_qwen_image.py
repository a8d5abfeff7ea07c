"""A real-size Qwen-Image pipeline with random weights, for timing on a GPU (no hub access is needed).

The transformer has Qwen-Image's (and Qwen-Image-2512's) exact configuration (about 20.4B parameters: 60
double-stream blocks of 24 heads x 128, joint attention over Qwen2.5-VL's 3584-wide hidden states, RoPE
axes 16/56/56), the text encoder has Qwen2.5-VL-7B-Instruct's shapes (28 layers of 3584, GQA with 4 KV
heads, its 32-block vision tower too, which `Qwen2_5_VLForConditionalGeneration` always builds), the VAE
is `AutoencoderKLQwenImage` with its defaults (which are the released VAE's config). The tokenizer is the
project's small offline one with the template check of tiny_qwen_image: a prompt becomes fewer tokens
than with the real vocabulary, but training pads the text to 512 and the transformer sees the batch's
longest prompt either way, so the step time barely depends on it. Weights are saved in bfloat16 (the
VAE in float32, as the trainer runs it): about 58 GB.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from bench.full_size import count_parameters
from trainer.synthetic.tiny_qwen_image import SCHEDULER_CONFIG, VISION_TOKENS, qwen_image_tokenizer

QWEN_TRANSFORMER: dict[str, Any] = {
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 60,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 3584,
    "guidance_embeds": False,
    "axes_dims_rope": (16, 56, 56),
}
# Qwen2.5-VL-7B-Instruct's config.json (the text_encoder of Qwen/Qwen-Image).
QWEN_VL_TEXT: dict[str, Any] = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    "hidden_act": "silu",
}
QWEN_VL_VISION: dict[str, Any] = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "out_hidden_size": 3584,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
    "hidden_act": "silu",
}


def build_full_qwen_image(out_dir: Path, *, device: str = "cpu", seed: int = 0) -> Path:
    """Build the pipeline on `device` (a GPU builds it in seconds) and save it as a diffusers folder."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = qwen_image_tokenizer(Path(scratch))
    ids = tokenizer.convert_tokens_to_ids
    with torch.device(device):
        transformer = QwenImageTransformer2DModel(**QWEN_TRANSFORMER).to(torch.bfloat16)
        text_encoder = Qwen2_5_VLForConditionalGeneration(
            _text_encoder_config(
                pad=tokenizer.pad_token_id, eos=ids("<|im_end|>"), vision=[ids(t) for t in VISION_TOKENS]
            )
        ).to(torch.bfloat16)
        vae = AutoencoderKLQwenImage()
    QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    ).save_pretrained(out_dir)
    return out_dir


def _text_encoder_config(*, pad: int, eos: int, vision: list[int]) -> Qwen2_5_VLConfig:
    """Qwen2.5-VL-7B's shapes; the special-token ids are the small tokenizer's (vision: start, end,
    image pad, video pad)."""
    text = {**QWEN_VL_TEXT, "bos_token_id": pad, "eos_token_id": eos, "pad_token_id": pad}
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=QWEN_VL_VISION,
        vision_start_token_id=vision[0],
        vision_end_token_id=vision[1],
        image_token_id=vision[2],
        video_token_id=vision[3],
        tie_word_embeddings=False,
    )


def parameter_counts() -> dict[str, int]:
    """Parameters per component, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        encoder = Qwen2_5_VLForConditionalGeneration(_text_encoder_config(pad=0, eos=1, vision=[2, 3, 4, 5]))
        return {
            "transformer": count_parameters(QwenImageTransformer2DModel(**QWEN_TRANSFORMER)),
            "vae": count_parameters(AutoencoderKLQwenImage()),
            "text_encoder": count_parameters(encoder),
        }


if __name__ == "__main__":
    # `python -m bench.full_qwen_image` prints the parameter counts; `... OUT_DIR` builds the pipeline there.
    if len(sys.argv) > 1:
        build_full_qwen_image(Path(sys.argv[1]), device="cuda" if torch.cuda.is_available() else "cpu")
    for component, count in parameter_counts().items():
        print(f"{component:16} {count / 1e6:9.1f} M")

"""Tokenizing for the text encoders the families share: CLIP (77 tokens) and T5 (a family's length)."""

from __future__ import annotations

from typing import Any

import torch

CLIP_LENGTH = 77


def clip_ids(tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    """(N, 77) CLIP token ids, padded and truncated to the tokenizer's length."""
    return token_ids(tokenizer, prompts, tokenizer.model_max_length)


def token_ids(tokenizer: Any, prompts: list[str], length: int) -> torch.Tensor:
    """(N, length) token ids, padded and truncated to `length`."""
    ids: torch.Tensor = tokenizer(
        prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
    ).input_ids
    return ids

"""The held-out evaluator scores the model as it is, without the randomness used to train it."""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.data import load_pairs
from trainer.evaluation import HeldOutEvaluator
from trainer.families.registry import load_family
from trainer.lora import attach_lora, trainable_parameters


def test_held_out_scores_are_repeatable_with_lora_dropout(tiny_sd: Path, color_pairs: Path) -> None:
    model = load_family(str(tiny_sd), device=torch.device("cpu"), weight_dtype=torch.float32)
    attach_lora(model.denoiser, rank=4, alpha=4.0, dropout=0.5, targets=list(model.default_lora_targets))
    with torch.no_grad():
        for param in trainable_parameters(model.denoiser):  # B starts at 0, which would hide the dropout
            param.normal_(std=0.5)
    evaluator = HeldOutEvaluator(
        model, color_pairs, load_pairs(color_pairs)[:2], resolution=model.native_resolution, seed=0
    )

    assert evaluator.evaluate(model.denoiser) == evaluator.evaluate(model.denoiser)
    dropouts = [m for name, m in model.denoiser.named_modules() if name.endswith("lora_dropout.default")]
    assert dropouts and all(m.training for m in dropouts)  # training mode is restored afterwards

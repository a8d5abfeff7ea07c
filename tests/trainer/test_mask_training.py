"""Training with preference masks, end to end on the tiny models: a masked dataset trains, an all-white
mask trains exactly as no mask, and a half mask changes the loss (with and without the latent cache) and
the held-out scores."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.specs import tiny_spec
from trainer.data import load_pairs
from trainer.dataset_format import DatasetWriter, EncodedImage
from trainer.evaluation import HeldOutEvaluator
from trainer.events import Event, Step
from trainer.families.registry import load_family
from trainer.loop import train


def _png(image: Image.Image) -> EncodedImage:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return EncodedImage(buffer.getvalue())


def _noise_image(seed: int) -> Image.Image:
    # Textured images, so the two halves of the error differ.
    array = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return Image.fromarray(array, "RGB")


def _mask(left_only: bool) -> Image.Image:
    mask = Image.new("L", (32, 32), 255)
    if left_only:
        mask.paste(0, (16, 0, 32, 32))
    return mask


def _dataset(root: Path, mask: str) -> Path:
    """Four pairs of noise images; mask: "none", "white" (everywhere) or "left" (the left half)."""
    with DatasetWriter(root) as writer:
        for i in range(4):
            writer.add_pair(
                f"pair {i}",
                chosen=_png(_noise_image(2 * i)),
                rejected=_png(_noise_image(2 * i + 1)),
                mask=None if mask == "none" else _png(_mask(left_only=mask == "left")),
            )
    return root


def _losses(base: Path, dataset: Path, out: Path, **overrides: object) -> list[float]:
    """Each step's chosen_loss: DPO's loss is log 2 at the first step whatever the errors (the LoRA starts
    at zero, so policy and reference agree), while every method logs the chosen images' error."""
    events: list[Event] = []
    spec = tiny_spec(base, max_train_steps=2, hflip=False, **overrides)
    train(spec, dataset, out, on_event=events.append)
    return [e.metrics["chosen_loss"] for e in events if isinstance(e, Step)]


@pytest.mark.parametrize("cache_latents", [False, True])
@pytest.mark.parametrize("method", ["mapo", "dpo", "sft"])
def test_a_half_mask_changes_the_loss_and_a_white_one_does_not(
    tiny_sd: Path, tmp_path: Path, method: str, cache_latents: bool
) -> None:
    runs = {
        mask: _losses(
            tiny_sd,
            _dataset(tmp_path / mask, mask),
            tmp_path / f"out-{mask}",
            method=method,
            cache_latents=cache_latents,
        )
        for mask in ("none", "white", "left")
    }
    assert len(runs["left"]) == 2 and all(np.isfinite(runs["left"]))
    np.testing.assert_allclose(runs["white"], runs["none"], rtol=1e-4)
    assert abs(runs["left"][0] - runs["none"][0]) > 1e-4 * abs(runs["none"][0])


def test_every_family_trains_on_a_masked_dataset(tiny_model: Path, tmp_path: Path) -> None:
    base = tiny_model
    masked = _losses(base, _dataset(tmp_path / "left", "left"), tmp_path / "out-left")
    plain = _losses(base, _dataset(tmp_path / "none", "none"), tmp_path / "out-none")
    assert len(masked) == 2 and all(np.isfinite(masked))
    assert masked[0] != pytest.approx(plain[0], rel=1e-4)


def test_held_out_pairs_are_scored_over_their_masks(tiny_sd: Path, tmp_path: Path) -> None:
    model = load_family(str(tiny_sd), device=torch.device("cpu"), weight_dtype=torch.float32)

    def scores(mask: str) -> dict[str, float]:
        root = _dataset(tmp_path / mask, mask)
        evaluator = HeldOutEvaluator(model, root, load_pairs(root), resolution=32, seed=0)
        return evaluator.evaluate(model.denoiser)

    plain, white, left = scores("none"), scores("white"), scores("left")
    assert white["heldout_chosen_loss"] == pytest.approx(plain["heldout_chosen_loss"], rel=1e-5)
    assert left["heldout_chosen_loss"] != pytest.approx(plain["heldout_chosen_loss"], rel=1e-4)

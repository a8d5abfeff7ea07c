"""Preference masks in the stored dataset, the batches built from it and the latent cache."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.support.specs import tiny_spec
from trainer.completion import complete_dataset
from trainer.data import Augment, PairDataset, collate_pairs, load_pairs
from trainer.dataset_format import DatasetFormatError, DatasetWriter, EncodedImage, read_pairs
from trainer.encoding import CachedPairDataset, build_cache, collate_cached
from trainer.families.registry import load_family

CPU = torch.device("cpu")


def _png(image: Image.Image) -> EncodedImage:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return EncodedImage(buffer.getvalue())


def _left_white(size: tuple[int, int]) -> EncodedImage:
    """White over the left half of a (w, h) image, black elsewhere."""
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, size[0] // 2, size[1]))
    return _png(mask)


def _dataset(root: Path, *, masked: tuple[bool, ...]) -> Path:
    with DatasetWriter(root) as writer:
        for i, has_mask in enumerate(masked):
            writer.add_pair(
                f"pair {i}",
                chosen=_png(Image.new("RGB", (64, 64), (200, 40, 40))),
                rejected=_png(Image.new("RGB", (64, 64), (40, 40, 200))),
                # Any size: the mask is stretched onto its images.
                mask=_left_white((16, 16)) if has_mask else None,
            )
    return root


def test_a_row_without_a_mask_is_stored_as_before(tmp_path: Path) -> None:
    root = _dataset(tmp_path, masked=(True, False))
    rows = [json.loads(line) for line in (root / "pairs.jsonl").read_text().splitlines()]
    assert rows[0]["mask"] == "images/000000_mask.png"
    assert set(rows[1]) == {"prompt", "chosen", "rejected"}
    assert [pair.mask for pair in read_pairs(root)] == ["images/000000_mask.png", None]


def test_a_missing_mask_file_is_a_format_error_naming_row_and_field(tmp_path: Path) -> None:
    root = _dataset(tmp_path, masked=(True,))
    (root / "images/000000_mask.png").unlink()
    with pytest.raises(DatasetFormatError, match="row 0, field mask"):
        read_pairs(root)


def _halves(mask: torch.Tensor) -> tuple[float, float]:
    width = mask.shape[-1]
    return mask[..., : width // 2].mean().item(), mask[..., width // 2 :].mean().item()


def test_the_batch_carries_the_mask_and_ones_for_a_pair_without_one(tmp_path: Path) -> None:
    root = _dataset(tmp_path, masked=(True, False))
    dataset = PairDataset(root, load_pairs(root), Augment(32, random_crop=False, hflip=False), seed=0)
    batch = collate_pairs([dataset[0], dataset[1]])
    assert batch.mask is not None and batch.mask.shape == (2, 1, 32, 32)
    left, right = _halves(batch.mask[0])
    assert left > 0.95 and right < 0.05, "white on the left, stretched from 16 px to the images' 64 px"
    assert torch.equal(batch.mask[1], torch.ones(1, 32, 32)), "a pair without a mask counts everywhere"


def test_the_mask_is_flipped_with_its_images(tmp_path: Path) -> None:
    with DatasetWriter(tmp_path / "lopsided") as writer:
        # A chosen image that is red on the left only, so its flip shows in the pixels too.
        image = Image.new("RGB", (64, 64), (0, 0, 0))
        image.paste((255, 0, 0), (0, 0, 32, 64))
        writer.add_pair("p", chosen=_png(image), rejected=_png(image), mask=_left_white((64, 64)))
    root = tmp_path / "lopsided"
    dataset = PairDataset(root, load_pairs(root), Augment(32, random_crop=False, hflip=True), seed=0)
    sides = set()
    for draw in range(16):
        item = dataset[draw]
        mask_left, mask_right = _halves(item["mask"])
        red_left, red_right = _halves(item["pixels"][0, 0])
        assert (mask_left > mask_right) == (red_left > red_right)
        sides.add(mask_left > mask_right)
    assert sides == {True, False}, "sixteen draws with hflip see both sides"


def test_a_dataset_without_masks_has_no_batch_mask(tmp_path: Path) -> None:
    root = _dataset(tmp_path, masked=(False, False))
    dataset = PairDataset(root, load_pairs(root), Augment(32, random_crop=False, hflip=False), seed=0)
    assert collate_pairs([dataset[0], dataset[1]]).mask is None


def test_the_latent_cache_keeps_the_mask_on_the_latent_grid(tmp_path: Path, tiny_sd: Path) -> None:
    root = _dataset(tmp_path, masked=(True, False))
    family = load_family(str(tiny_sd), device=CPU, weight_dtype=torch.float32)
    augment = Augment(32, random_crop=False, hflip=False)
    cache = build_cache(family, root, load_pairs(root), augment)
    batch = collate_cached([CachedPairDataset(cache, hflip=False, seed=0)[i] for i in range(2)])
    side = 32 // family.vae_scale_factor
    assert batch.latent_mean is not None and batch.latent_mean.shape[-2:] == (side, side)
    assert batch.mask is not None and batch.mask.shape == (2, 1, side, side)
    left, right = _halves(batch.mask[0])
    assert left > 0.95 and right < 0.05
    assert torch.equal(batch.mask[1, 0], torch.ones(side, side))


def test_a_completed_targets_dataset_keeps_each_row_s_mask(tmp_path: Path, tiny_sd: Path) -> None:
    root = tmp_path / "targets"
    with DatasetWriter(root, kind="targets") as writer:
        for i in range(2):
            writer.add_target(
                f"row {i}",
                image=_png(Image.new("RGB", (32, 32), (200, 40, 40))),
                generation_prompt=None,
                mask=_left_white((32, 32)) if i == 0 else None,
            )
    spec = tiny_spec(tiny_sd, generation={"num_inference_steps": 2})
    pairs_dir = complete_dataset(root, spec, seed_namespace="ds_masks", on_event=lambda _: None)
    assert pairs_dir is not None
    pairs = read_pairs(pairs_dir)
    assert pairs[0].mask is not None and pairs[1].mask is None
    assert (pairs_dir / pairs[0].mask).read_bytes() == (root / "images/000000_mask.png").read_bytes()

"""Pair transforms: aligned flips and crops, recorded crop offsets, [-1, 1] pixels, deterministic splits."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from trainer.data import EpochSampler, collate_pairs, prepare_image, split_pairs


def _gradient_image(path: Path, size: tuple[int, int]) -> Path:
    image = Image.new("RGB", size)
    image.putdata([(x * 255 // size[0], 0, 0) for _ in range(size[1]) for x in range(size[0])])
    image.save(path)
    return path


def test_shorter_side_is_resized_then_center_cropped(tmp_path: Path) -> None:
    prepared = prepare_image(
        _gradient_image(tmp_path / "a.png", (200, 100)), resolution=50, flip=False, crop_fraction=(0.5, 0.5)
    )
    assert prepared.pixels.shape == (3, 50, 50)
    assert prepared.original_size == (100, 200)
    assert prepared.crop_top_left == (0, 25)
    assert prepared.pixels.min() >= -1.0 and prepared.pixels.max() <= 1.0


def test_flip_happens_before_the_crop(tmp_path: Path) -> None:
    path = _gradient_image(tmp_path / "a.png", (200, 100))
    left = prepare_image(path, resolution=100, flip=False, crop_fraction=(0.0, 0.0))
    flipped = prepare_image(path, resolution=100, flip=True, crop_fraction=(0.0, 0.0))
    # Unflipped, the left crop is the dark half; flipped, the left crop holds the bright half.
    assert left.pixels[0].mean() < 0 < flipped.pixels[0].mean()


def test_collate_puts_all_chosen_before_all_rejected() -> None:
    items = [
        {
            "pixels": torch.stack([torch.full((3, 4, 4), float(i)), torch.full((3, 4, 4), -float(i))]),
            "prompt": f"p{i}",
            "original_size": torch.tensor([4, 4]),
            "crop_top_left": torch.tensor([0, 0]),
            "index": i,
        }
        for i in (1, 2)
    ]
    batch = collate_pairs(items)
    assert batch.pixels is not None and batch.pixels[:, 0, 0, 0].tolist() == [1.0, 2.0, -1.0, -2.0]
    assert batch.prompts == ["p1", "p2"]


def test_split_is_deterministic_and_disjoint() -> None:
    train_a, eval_a = split_pairs(20, 0.25, seed=3)
    train_b, eval_b = split_pairs(20, 0.25, seed=3)
    assert (train_a, eval_a) == (train_b, eval_b)
    assert len(eval_a) == 5 and not set(train_a) & set(eval_a)
    assert split_pairs(20, 0.0, seed=3) == (list(range(20)), [])


def test_epoch_order_depends_only_on_seed_and_epoch() -> None:
    sampler = EpochSampler(10, seed=1)
    sampler.set_epoch(2)
    first = list(sampler)
    again = EpochSampler(10, seed=1)
    again.set_epoch(2)
    assert list(again) == first and sorted(first) == list(range(20, 30)), "draw ids of epoch 2"

"""The latent cache encodes a bounded number of pixels per VAE call, so building it never needs more
memory than a few training images do, and what it stores does not depend on how the calls were cut."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.data import Augment, load_pairs
from trainer.encoding import ENCODE_PIXELS, build_cache, encode_pixels, images_per_call
from trainer.families.registry import load_family

CPU = torch.device("cpu")


def test_a_call_holds_the_device_s_pixel_budget_and_at_least_one_image() -> None:
    assert images_per_call(CPU, 128) == ENCODE_PIXELS["cpu"] // (128 * 128) >= 1
    assert images_per_call(torch.device("cuda"), 1024) == ENCODE_PIXELS["cuda"] // 1024**2 >= 1
    assert images_per_call(CPU, 4096) == 1, "an image over the budget is still encoded, alone"
    assert images_per_call(torch.device("mps"), 128) == images_per_call(CPU, 128), "other devices: the CPU's"
    with pytest.raises(ValueError, match="resolution"):
        images_per_call(CPU, 0)


def test_encoding_in_smaller_calls_gives_the_same_latents(tiny_sdxl: Path) -> None:
    family = load_family(str(tiny_sdxl), device=CPU, weight_dtype=torch.float32)
    pixels = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    whole_mean, whole_std = encode_pixels(family, pixels)
    split_mean, split_std = encode_pixels(family, pixels, per_call=2)
    assert split_mean.shape == whole_mean.shape == (5, family.vae.config.latent_channels, 4, 4)
    torch.testing.assert_close(split_mean, whole_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(split_std, whole_std, rtol=1e-5, atol=1e-6)


def test_the_cache_calls_the_vae_within_the_budget_and_stores_the_same_latents(
    tiny_sdxl: Path, color_pairs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    family = load_family(str(tiny_sdxl), device=CPU, weight_dtype=torch.float32)
    pairs = load_pairs(color_pairs)
    augment = Augment(32, random_crop=False, hflip=True)
    calls: list[int] = []
    encode = family.vae.encode
    monkeypatch.setattr(family.vae, "encode", lambda x: calls.append(len(x)) or encode(x))

    monkeypatch.setitem(ENCODE_PIXELS, "cpu", 3 * 32 * 32)
    progress: list[tuple[int, int]] = []
    small = build_cache(family, color_pairs, pairs, augment, on_progress=lambda *p: progress.append(p))
    assert max(calls) == 3 and sum(calls) == 4 * len(pairs), "a pair and its mirror: 4 images, 3 a call"
    assert progress[-1] == (len(pairs), len(pairs))

    calls.clear()
    monkeypatch.setitem(ENCODE_PIXELS, "cpu", 64 * 4 * 32 * 32)
    big = build_cache(family, color_pairs, pairs, augment)
    assert calls == [4 * len(pairs)], "every image in one call"
    for a, b in zip(small.means + small.stds, big.means + big.stds, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_cache_bench_measures_a_setting_it_was_given() -> None:
    from bench.cache_build import _measure

    budget = dict(ENCODE_PIXELS)
    result = _measure({"resolution": 32, "images": 2, "pairs": 4, "preset": "tiny"})
    assert result["per_call"] == 2
    assert budget == ENCODE_PIXELS, "the trainer's budget is put back"
    assert result["seconds"] > 0 and result["peak_mb"] >= 0

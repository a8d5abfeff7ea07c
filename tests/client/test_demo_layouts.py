"""`mapo demo-data --format`: the captioned-images, pair-folders and parquet-shards layouts, ingested
for real."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from api.services.ingest import ingest_upload
from client.cli import main
from trainer.dataset_format import read_pairs, read_targets

PAIRS = 4


def is_red(path: Path) -> bool:
    """Whether the image's shapes are red: the prefer-red preset's chosen side (rejected: green or blue)."""
    with Image.open(path) as image:
        red, green, blue = (sum(band.getdata()) for band in image.convert("RGB").split())
    return red > max(green, blue)


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_captions_layout_is_a_targets_upload_of_the_chosen_images(tmp_path: Path, suffix: str) -> None:
    upload = tmp_path / f"demo{suffix}"
    assert (
        main(["demo-data", str(upload), "--pairs", str(PAIRS), "--resolution", "32", "--format", "captions"])
        == 0
    )

    report = ingest_upload(upload, upload.name, tmp_path / "ds", kind="targets", trigger_word="sks")

    assert (report.num_pairs, report.captions_missing) == (PAIRS, 0)
    rows = read_targets(tmp_path / "ds")
    assert all(row.prompt.startswith("sks ") and row.prompt.endswith(" background") for row in rows)
    assert all(is_red(tmp_path / "ds" / row.image) for row in rows)


@pytest.mark.parametrize("preset", ["prefer-red", "warm-cool"])
def test_pair_folders_layout_is_a_pairs_upload(tmp_path: Path, preset: str) -> None:
    upload = tmp_path / "demo.zip"
    argv = ["demo-data", str(upload), "--pairs", str(PAIRS), "--format", "pair-folders", "--preset", preset]
    assert main(argv) == 0

    report = ingest_upload(upload, upload.name, tmp_path / "ds", kind="pairs")

    assert report.num_pairs == PAIRS
    pairs = read_pairs(tmp_path / "ds")
    if preset == "prefer-red":
        assert all(
            is_red(tmp_path / "ds" / p.chosen) and not is_red(tmp_path / "ds" / p.rejected) for p in pairs
        )


def test_a_layout_other_than_the_manifest_is_refused_for_parquet(tmp_path: Path) -> None:
    argv = ["demo-data", str(tmp_path / "demo.parquet"), "--format", "captions"]
    assert main(argv) != 0
    assert not (tmp_path / "demo.parquet").exists()


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_parquet_shards_format_is_a_pairs_upload_read_shard_by_shard(tmp_path: Path, suffix: str) -> None:
    upload = tmp_path / f"demo{suffix}"
    argv = ["demo-data", str(upload), "--pairs", str(PAIRS), "--format", "parquet-shards", "--shards", "2"]
    assert main(argv) == 0

    report = ingest_upload(upload, upload.name, tmp_path / "ds", kind="pairs")

    assert report.num_pairs == PAIRS
    pairs = read_pairs(tmp_path / "ds")
    assert all(is_red(tmp_path / "ds" / p.chosen) and not is_red(tmp_path / "ds" / p.rejected) for p in pairs)


def test_shards_default_to_four_and_apply_only_to_the_parquet_shards_format(tmp_path: Path) -> None:
    upload = tmp_path / "demo.zip"
    assert main(["demo-data", str(upload), "--format", "parquet-shards"]) == 0
    assert ingest_upload(upload, upload.name, tmp_path / "ds").num_pairs == 48
    with zipfile.ZipFile(upload) as archive:
        assert archive.namelist()[-1] == "data/train-00003-of-00004.parquet"

    assert main(["demo-data", str(tmp_path / "other.zip"), "--shards", "2"]) != 0
    assert main(["demo-data", str(tmp_path / "none.zip"), "--format", "parquet-shards", "--shards", "0"]) != 0
    assert not (tmp_path / "other.zip").exists() and not (tmp_path / "none.zip").exists()


@pytest.mark.parametrize(
    ("name", "layout"),
    [
        ("demo.zip", "manifest"),
        ("demo.tar.gz", "pair-folders"),
        ("demo.parquet", "manifest"),
        ("demo.zip", "parquet-shards"),
    ],
)
def test_masks_cover_the_shapes_of_every_other_pair_in_each_format(
    tmp_path: Path, name: str, layout: str
) -> None:
    upload = tmp_path / name
    argv = ["demo-data", str(upload), "--pairs", str(PAIRS), "--format", layout, "--masks"]
    assert main(argv) == 0

    assert ingest_upload(upload, upload.name, tmp_path / "ds", kind="pairs").num_pairs == PAIRS
    pairs = read_pairs(tmp_path / "ds")
    assert [p.mask is not None for p in pairs] == [True, False] * (PAIRS // 2)
    for pair in pairs[::2]:
        assert pair.mask is not None
        white = _box(tmp_path / "ds" / pair.mask, threshold=127)
        # The shape: where the chosen (red) and the rejected (green or blue) drawing differ.
        shape = _differing_box(tmp_path / "ds" / pair.chosen, tmp_path / "ds" / pair.rejected)
        assert white is not None and shape is not None
        assert all(abs(a - b) <= 2 for a, b in zip(white, shape, strict=True)), (white, shape)


def _box(path: Path, *, threshold: int) -> tuple[int, int, int, int] | None:
    with Image.open(path) as image:
        return image.convert("L").point(lambda v: 255 if v > threshold else 0).getbbox()


def _differing_box(a: Path, b: Path) -> tuple[int, int, int, int] | None:
    """The bounding box of the pixels where two images differ by more than JPEG's noise."""
    with Image.open(a) as first, Image.open(b) as second:
        difference = ImageChops.difference(first.convert("RGB"), second.convert("RGB"))
    return difference.convert("L").point(lambda v: 255 if v > 40 else 0).getbbox()


def test_masks_are_refused_for_captioned_images(tmp_path: Path) -> None:
    argv = ["demo-data", str(tmp_path / "demo.zip"), "--format", "captions", "--masks"]
    assert main(argv) != 0
    assert not (tmp_path / "demo.zip").exists()

"""Masks in uploads: an optional `mask` per pairs.jsonl/pairs.csv row (and per targets row), checked at
ingest and stored beside the pair's images."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from api.services.ingest import IngestRejected, Problem, ingest_upload
from tests.support.archives import jsonl, make_tar, make_zip, pair_row, target_files, valid_files
from tests.support.problems import where
from trainer.dataset_format import DatasetKind, read_pairs, read_targets


def _mask_png(white: bool = True, size: tuple[int, int] = (8, 8)) -> bytes:
    """Grayscale, white over the left half (or black everywhere)."""
    image = Image.new("L", size, 0)
    if white:
        image.paste(255, (0, 0, size[0] // 2, size[1]))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _masked_files(count: int = 2, *, masked: tuple[int, ...] = (0,)) -> dict[str, bytes]:
    files = valid_files(count)
    rows = [pair_row(i) | ({"mask": f"masks/{i}.png"} if i in masked else {}) for i in range(count)]
    files["pairs.jsonl"] = jsonl(rows)
    files |= {f"masks/{i}.png": _mask_png() for i in masked}
    return files


def _rejection(upload: Path, dest: Path, kind: DatasetKind = "pairs") -> list[Problem]:
    with pytest.raises(IngestRejected) as caught:
        ingest_upload(upload, upload.name, dest, kind=kind)
    assert not dest.exists()
    return caught.value.problems


@pytest.mark.parametrize("container", ["zip", "tar"])
def test_a_row_s_mask_is_stored_beside_its_pair(tmp_path: Path, container: str) -> None:
    make = make_zip if container == "zip" else make_tar
    upload = make(tmp_path / f"up.{container}", _masked_files(2))
    report = ingest_upload(upload, upload.name, tmp_path / "ds", kind="pairs")
    assert report.num_pairs == 2
    pairs = read_pairs(tmp_path / "ds")
    assert [pair.mask for pair in pairs] == ["images/000000_mask.png", None]
    assert (tmp_path / "ds" / "images/000000_mask.png").read_bytes() == _mask_png()


def test_a_csv_mask_column_may_be_empty_on_some_rows(tmp_path: Path) -> None:
    files = valid_files(2)
    files.pop("pairs.jsonl")
    files["pairs.csv"] = (
        b"prompt,chosen,rejected,mask\n"
        b"a red circle,images/0_w.png,images/0_c.png,m.png\n"
        b"a red circle,images/1_w.png,images/1_c.png,\n"
    )
    files["m.png"] = _mask_png(size=(40, 24))  # any size: the trainer stretches it
    upload = make_zip(tmp_path / "up.zip", files)
    ingest_upload(upload, upload.name, tmp_path / "ds", kind="pairs")
    assert [pair.mask is not None for pair in read_pairs(tmp_path / "ds")] == [True, False]


def test_a_missing_mask_file_is_refused_naming_row_and_field(tmp_path: Path) -> None:
    files = _masked_files(2, masked=(0, 1))
    del files["masks/1.png"]
    problems = _rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds")
    assert where(problems) == {(1, "mask")}
    assert "not in the archive" in problems[0].reason


def test_a_mask_that_is_not_an_image_is_refused(tmp_path: Path) -> None:
    files = _masked_files(1)
    files["masks/0.png"] = b"not an image at all"
    problems = _rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds")
    assert where(problems) == {(0, "mask")}


def test_an_all_black_mask_is_refused(tmp_path: Path) -> None:
    files = _masked_files(2, masked=(0, 1))
    files["masks/1.png"] = _mask_png(white=False)
    problems = _rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds")
    assert where(problems) == {(1, "mask")}
    assert "black everywhere" in problems[0].reason


def test_a_targets_row_may_carry_a_mask(tmp_path: Path) -> None:
    files = target_files(1, mask="m.png") | {"m.png": _mask_png()}
    upload = make_zip(tmp_path / "up.zip", files)
    ingest_upload(upload, upload.name, tmp_path / "ds", kind="targets")
    [row] = read_targets(tmp_path / "ds")
    assert row.mask == "images/000000_mask.png"
    assert (tmp_path / "ds" / row.mask).read_bytes() == _mask_png()


def test_a_targets_row_s_black_mask_is_refused(tmp_path: Path) -> None:
    files = target_files(1, mask="m.png") | {"m.png": _mask_png(white=False)}
    problems = _rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds", "targets")
    assert where(problems) == {(0, "mask")}

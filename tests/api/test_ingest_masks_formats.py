"""Masks beyond manifests: an optional `mask` column in parquet uploads (pairs, targets, avoid) and an
optional m/ folder beside pair folders' w/ and l/; and the parquet readers' row numbering from an offset
(for uploads read in several parquet files)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from api.services.ingest import IngestLimits, IngestRejected, IngestReport, Problem, ingest_upload
from api.services.ingest.collector import PairCollector
from api.services.ingest.parquet_reader import ingest_parquet
from api.services.ingest.target_rows import ingest_parquet_targets
from tests.support.api_calls import upload as upload_dataset
from tests.support.archives import PICK_SCHEMA, is_warm, make_parquet, make_tar, make_zip
from tests.support.mask_formats import (
    AVOID_MASK_SCHEMA,
    PICK_MASK_SCHEMA,
    TARGETS_MASK_SCHEMA,
    mask_image,
    masked_folders,
    pick_row,
    target_row,
)
from tests.support.parquet_shards import parquet_bytes
from tests.support.problems import where
from trainer.dataset_format import DatasetKind, DatasetWriter, read_pairs, read_targets

MakeArchive = Callable[[Path, dict[str, bytes]], Path]


def collect(dest: Path, kind: DatasetKind) -> tuple[DatasetWriter, PairCollector]:
    writer = DatasetWriter(dest, kind=kind)
    return writer, PairCollector(writer, IngestLimits())


# --- rows numbered from an offset --------------------------------------------------------------------


def test_pairs_parquet_rows_are_numbered_from_first_row(tmp_path: Path) -> None:
    rows = [pick_row(0), pick_row(1, jpg_1=b"\x89PNG garbage")]
    upload = make_parquet(tmp_path / "p.parquet", rows, PICK_MASK_SCHEMA)
    writer, collector = collect(tmp_path / "ds", "pairs")
    with writer:
        ingest_parquet(upload, collector, first_row=100)
    assert where(collector.problems) == {(101, "jpg_1")}


def test_targets_parquet_rows_are_numbered_from_first_row(tmp_path: Path) -> None:
    rows = [target_row(0), target_row(1, prompt="")]
    upload = make_parquet(tmp_path / "t.parquet", rows, TARGETS_MASK_SCHEMA)
    writer, collector = collect(tmp_path / "ds", "targets")
    with writer:
        ingest_parquet_targets(upload, collector, first_row=7)
    assert where(collector.problems) == {(8, "prompt")}


# --- parquet: an optional mask column ----------------------------------------------------------------


def ingest(upload: Path, dest: Path, kind: DatasetKind = "pairs", **limits: int) -> IngestReport:
    return ingest_upload(upload, upload.name, dest, kind=kind, limits=IngestLimits(**limits))


def rejection(upload: Path, dest: Path, kind: DatasetKind = "pairs", **limits: int) -> list[Problem]:
    with pytest.raises(IngestRejected) as caught:
        ingest(upload, dest, kind, **limits)
    assert not dest.exists()  # nothing half-written
    return caught.value.problems


def stored_masks(dataset: Path) -> list[bytes | None]:
    """Each stored row's mask bytes (None for a row without one), read back through the dataset reader."""
    return [None if pair.mask is None else (dataset / pair.mask).read_bytes() for pair in read_pairs(dataset)]


def test_a_parquet_mask_column_gives_each_row_its_own_mask_or_none(tmp_path: Path) -> None:
    grey_jpeg = mask_image(size=(40, 24), mode="RGB", fmt="JPEG")  # any size and mode: read as grayscale
    rows = [
        pick_row(0, mask=mask_image()),
        pick_row(1),  # null: trains on the whole image
        pick_row(2, mask=grey_jpeg, label_0=0.0, label_1=1.0),  # jpg_1 chosen: the mask stays with the pair
    ]
    upload = make_parquet(tmp_path / "p.parquet", rows, PICK_MASK_SCHEMA)

    report = ingest(upload, tmp_path / "ds")

    assert [p.masked for p in report.preview] == [True, False, True]
    assert stored_masks(tmp_path / "ds") == [mask_image(), None, grey_jpeg]
    assert [p.mask for p in read_pairs(tmp_path / "ds")] == [
        "images/000000_mask.png",
        None,
        "images/000002_mask.jpg",
    ]
    assert not is_warm(tmp_path / "ds" / read_pairs(tmp_path / "ds")[2].chosen)


def test_a_parquet_without_a_mask_column_still_ingests_unmasked(tmp_path: Path) -> None:
    rows = [pick_row(i) for i in range(2)]  # the schema leaves their mask out
    ingest(make_parquet(tmp_path / "p.parquet", rows, PICK_SCHEMA), tmp_path / "ds")
    assert stored_masks(tmp_path / "ds") == [None, None]


def test_parquet_masks_that_are_black_or_undecodable_are_refused_naming_row_and_field(tmp_path: Path) -> None:
    rows = [
        pick_row(0, mask=mask_image()),
        pick_row(1, mask=mask_image(white=False)),
        pick_row(2, mask=b"\x89PNG not really"),
        pick_row(3, mask=mask_image(white=False, mode="RGB")),
    ]
    upload = make_parquet(tmp_path / "p.parquet", rows, PICK_MASK_SCHEMA)

    problems = rejection(upload, tmp_path / "ds")

    assert where(problems) == {(1, "mask"), (2, "mask"), (3, "mask")}
    reasons = {p.row: p.reason for p in problems}
    assert "black everywhere" in reasons[1] and "black everywhere" in reasons[3]
    assert "PNG, JPEG or WebP" in reasons[2] or "does not decode" in reasons[2]


def test_a_parquet_mask_over_the_image_limits_is_refused(tmp_path: Path) -> None:
    rows = [pick_row(0, mask=mask_image(size=(64, 64)))]
    upload = make_parquet(tmp_path / "p.parquet", rows, PICK_MASK_SCHEMA)

    problems = rejection(upload, tmp_path / "ds", max_image_pixels=1024)  # the 16x16 images fit

    assert where(problems) == {(0, "mask")}
    assert "pixels" in problems[0].reason


def test_a_parquet_mask_column_of_text_is_refused_naming_the_column(tmp_path: Path) -> None:
    schema = PICK_SCHEMA.append(pa.field("mask", pa.string()))
    rows = [pick_row(0) | {"mask": "masks/0.png"}]  # a path, as in a manifest: not what parquet holds

    problems = rejection(make_parquet(tmp_path / "p.parquet", rows, schema), tmp_path / "ds")

    assert where(problems) == {(None, "mask")}
    assert "binary image bytes" in problems[0].reason


def test_a_targets_parquet_may_carry_masks(tmp_path: Path) -> None:
    rows = [target_row(0), target_row(1, mask=mask_image(size=(3, 5)))]
    upload = make_parquet(tmp_path / "t.parquet", rows, TARGETS_MASK_SCHEMA)

    ingest(upload, tmp_path / "ds", "targets")

    targets = read_targets(tmp_path / "ds")
    assert [t.mask for t in targets] == [None, "images/000001_mask.png"]
    assert (tmp_path / "ds" / "images/000001_mask.png").read_bytes() == mask_image(size=(3, 5))


def test_an_avoid_parquet_s_black_mask_is_refused_naming_row_and_field(tmp_path: Path) -> None:
    rows = [target_row(i, mask=mask_image(white=i != 1), generation_prompt="a grey shape") for i in range(3)]
    upload = make_parquet(tmp_path / "a.parquet", rows, AVOID_MASK_SCHEMA)

    problems = rejection(upload, tmp_path / "ds", "avoid")

    assert where(problems) == {(1, "mask")}
    assert "black everywhere" in problems[0].reason


# --- pair folders: an optional m/ beside w/ and l/ ---------------------------------------------------


@pytest.mark.parametrize("make", [make_zip, make_tar])
@pytest.mark.parametrize("prefix", ["", "set/"])
def test_pair_folders_with_an_m_folder_mask_the_pairs_it_names(
    tmp_path: Path, make: MakeArchive, prefix: str
) -> None:
    jpeg_mask = mask_image(size=(20, 10), fmt="JPEG")  # m/b.jpg masks the pair of w/b.png and l/b.png
    masks = {"a.png": mask_image(), "b.png": jpeg_mask, "c.png": None}
    files = masked_folders(masks, prefix) | {f"{prefix}m/sub/d.webp": mask_image(fmt="WEBP")}
    files |= masked_folders({"sub/d.png": None}, prefix)
    upload = make(tmp_path / "up.bin", files)

    report = ingest(upload, tmp_path / "ds")

    assert (report.source_format, report.num_pairs) == ("zip" if make is make_zip else "tar", 4)
    assert [p.prompt for p in read_pairs(tmp_path / "ds")] == [
        "a warm a",
        "a warm b",
        "a warm c",
        "a warm sub/d",
    ]
    assert stored_masks(tmp_path / "ds") == [mask_image(), jpeg_mask, None, mask_image(fmt="WEBP")]


def test_a_mask_in_m_without_its_pair_is_refused_naming_the_file(tmp_path: Path) -> None:
    files = masked_folders({"a.png": mask_image()}) | {"m/stray.png": mask_image()}

    problems = rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds")

    assert where(problems) == {(None, "m")}
    assert "'m/stray.png'" in problems[0].reason


def test_a_black_mask_in_m_is_refused_naming_row_and_folder(tmp_path: Path) -> None:
    files = masked_folders({"a.png": mask_image(), "b.png": mask_image(white=False)})

    problems = rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds")

    assert where(problems) == {(1, "m")}
    assert "'m/b.png'" in problems[0].reason and "black everywhere" in problems[0].reason


def test_two_masks_under_one_name_and_a_non_image_in_m_are_refused(tmp_path: Path) -> None:
    files = masked_folders({"a.png": mask_image()}) | {"m/a.jpg": mask_image(fmt="JPEG"), "m/notes.md": b"x"}

    problems = rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds")

    assert where(problems) == {(None, "m")}
    assert len(problems) == 2


# --- through the HTTP API ----------------------------------------------------------------------------


def listed_mask_urls(client: TestClient, headers: dict[str, str], payload: bytes) -> tuple[str, list[Any]]:
    """Upload `payload` as a pairs dataset; the pairs route's base and each listed pair's mask_url."""
    dataset = upload_dataset(client, headers, payload)
    assert dataset["http_status"] == 201, dataset
    base = f"/v1/datasets/{dataset['id']}/pairs"
    return base, [p["mask_url"] for p in client.get(base, headers=headers).json()["data"]]


def test_a_masked_parquet_upload_links_its_masks_over_http(
    client: TestClient, headers: dict[str, str]
) -> None:
    rows = [pick_row(0), pick_row(1, mask=mask_image())]

    base, mask_urls = listed_mask_urls(client, headers, parquet_bytes(rows, PICK_MASK_SCHEMA))

    assert mask_urls == [None, f"{base}/1/mask"]
    assert client.get(f"{base}/1/mask", headers=headers).content == mask_image()


def test_masked_pair_folders_link_their_masks_over_http(
    client: TestClient, headers: dict[str, str], tmp_path: Path
) -> None:
    files = masked_folders({"a.png": mask_image(), "b.png": None})

    base, mask_urls = listed_mask_urls(client, headers, make_zip(tmp_path / "up.zip", files).read_bytes())

    assert mask_urls == [f"{base}/0/mask", None]
    assert client.get(f"{base}/0/mask", headers=headers).content == mask_image()

"""Targets and avoid uploads: one image per row, ingested for real from zip, tar and parquet files."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.services.ingest import IngestRejected, IngestReport, Problem, ingest_upload
from tests.support.archives import (
    COOL,
    TARGETS_GENERATION_SCHEMA,
    TARGETS_SCHEMA,
    WARM,
    is_warm,
    jsonl,
    make_parquet,
    make_tar,
    make_zip,
    png,
    target_files,
)
from tests.support.problems import where
from trainer.dataset_format import DatasetKind, read_manifest, read_targets


def ingest(upload: Path, dest: Path, kind: DatasetKind) -> IngestReport:
    return ingest_upload(upload, upload.name, dest, kind=kind)


def rejection(upload: Path, dest: Path, kind: DatasetKind) -> list[Problem]:
    with pytest.raises(IngestRejected) as caught:
        ingest(upload, dest, kind)
    assert not dest.exists()
    return caught.value.problems


# --- valid uploads -------------------------------------------------------------------------------------


@pytest.mark.parametrize("container", ["zip", "tar"])
def test_targets_archive_becomes_a_targets_dataset_of_chosen_images(tmp_path: Path, container: str) -> None:
    make = make_zip if container == "zip" else make_tar
    report = ingest(make(tmp_path / f"up.{container}", target_files(3)), tmp_path / "ds", "targets")

    assert (report.kind, report.num_pairs) == ("targets", 3)
    manifest = read_manifest(tmp_path / "ds")
    assert (manifest.kind, manifest.num_pairs) == ("targets", 3)
    rows = read_targets(tmp_path / "ds")
    assert [r.prompt for r in rows] == [f"a warm shape {i}" for i in range(3)]
    assert all(r.image.endswith("_chosen.png") and r.generation_prompt is None for r in rows)
    assert all(is_warm(tmp_path / "ds" / r.image) for r in rows)


def test_avoid_csv_stores_the_uploaded_images_as_the_rejected_side(tmp_path: Path) -> None:
    csv_text = 'prompt,image,generation_prompt\na beach,bad.png,"a beach, people fully clothed"\n'
    files = {"pairs.csv": csv_text.encode(), "bad.png": png(COOL)}
    report = ingest(make_zip(tmp_path / "up.zip", files), tmp_path / "ds", "avoid")

    assert (report.kind, report.num_pairs) == ("avoid", 1)
    [row] = read_targets(tmp_path / "ds")
    assert (row.prompt, row.generation_prompt) == ("a beach", "a beach, people fully clothed")
    assert row.image.endswith("_rejected.png")


def test_targets_rows_may_name_what_the_base_model_draws(tmp_path: Path) -> None:
    files = target_files(2, generation_prompt="a photo of a dog")
    ingest(make_zip(tmp_path / "up.zip", files), tmp_path / "ds", "targets")

    assert {r.generation_prompt for r in read_targets(tmp_path / "ds")} == {"a photo of a dog"}


def test_targets_parquet_holds_prompt_and_image_bytes(tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [{"prompt": f"shape {i}", "image": png(WARM)} for i in range(4)]
    report = ingest(make_parquet(tmp_path / "t.parquet", rows, TARGETS_SCHEMA), tmp_path / "ds", "targets")

    assert (report.kind, report.num_pairs, report.source_format) == ("targets", 4, "parquet")
    assert [r.prompt for r in read_targets(tmp_path / "ds")] == [f"shape {i}" for i in range(4)]


def test_avoid_parquet_reads_the_generation_prompt_column(tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [
        {"prompt": "a street", "image": png(COOL), "generation_prompt": "a clean street"}
    ]
    ingest(make_parquet(tmp_path / "a.parquet", rows, TARGETS_GENERATION_SCHEMA), tmp_path / "ds", "avoid")

    assert read_targets(tmp_path / "ds")[0].generation_prompt == "a clean street"


# --- problems, each with row and field -----------------------------------------------------------------


def test_avoid_row_without_a_generation_prompt_is_refused(tmp_path: Path) -> None:
    files = target_files(3, generation_prompt="a calm scene")
    rows = [
        {"prompt": "p0", "image": "want/0.png", "generation_prompt": "a calm scene"},
        {"prompt": "p1", "image": "want/1.png"},
        {"prompt": "p2", "image": "want/2.png", "generation_prompt": "  "},
    ]
    files["pairs.jsonl"] = jsonl(rows)
    problems = rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds", "avoid")

    assert where(problems) == {(1, "generation_prompt"), (2, "generation_prompt")}
    assert "avoid" in problems[0].reason


def test_every_targets_row_problem_names_its_row_and_field(tmp_path: Path) -> None:
    files = target_files(1)
    files["junk.png"] = b"not an image"
    rows: list[dict[str, object]] = [
        {"prompt": "fine", "image": "want/0.png"},
        {"prompt": "", "image": "want/0.png"},
        {"prompt": "no image"},
        {"prompt": "absent", "image": "want/9.png"},
        {"prompt": "broken", "image": "junk.png"},
        {"prompt": "typed", "image": "want/0.png", "generation_prompt": 7},
    ]
    files["pairs.jsonl"] = jsonl(rows)
    problems = rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds", "targets")

    assert where(problems) == {
        (1, "prompt"),
        (2, "image"),
        (3, "image"),
        (4, "image"),
        (5, "generation_prompt"),
    }


def test_pairs_archive_uploaded_as_targets_is_told_which_kind_it_is(tmp_path: Path) -> None:
    rows = [{"prompt": "a", "chosen": "w.png", "rejected": "c.png"}]
    files = {"pairs.jsonl": jsonl(rows), "w.png": png(WARM), "c.png": png(COOL)}
    problems = rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds", "targets")

    assert (0, "rejected") in where(problems)
    assert any("kind=pairs" in p.reason for p in problems)


def test_targets_csv_without_an_image_column_is_refused(tmp_path: Path) -> None:
    files = {"pairs.csv": b"prompt,chosen\na,w.png\n", "w.png": png(WARM)}
    problems = rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds", "targets")

    assert where(problems) == {(None, "image")}


def test_avoid_parquet_without_a_generation_prompt_column_is_refused(tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [{"prompt": "a street", "image": png(COOL)}]
    problems = rejection(make_parquet(tmp_path / "a.parquet", rows, TARGETS_SCHEMA), tmp_path / "ds", "avoid")

    assert where(problems) == {(None, "generation_prompt")}


def test_parquet_row_problems_name_row_and_field(tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [
        {"prompt": "ok", "image": png(WARM)},
        {"prompt": None, "image": png(WARM)},
        {"prompt": "no bytes", "image": None},
    ]
    upload = make_parquet(tmp_path / "t.parquet", rows, TARGETS_SCHEMA)
    problems = rejection(upload, tmp_path / "ds", "targets")

    assert where(problems) == {(1, "prompt"), (2, "image")}

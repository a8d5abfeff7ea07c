"""Masks beyond manifests: an optional `mask` column in parquet uploads (pairs, targets, avoid) and an
optional m/ folder beside pair folders' w/ and l/; and the parquet readers' row numbering from an offset
(for uploads read in several parquet files)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from api.services.ingest import IngestLimits
from api.services.ingest.collector import PairCollector
from api.services.ingest.parquet_reader import ingest_parquet
from api.services.ingest.target_rows import ingest_parquet_targets
from tests.support.archives import COOL, make_parquet, png
from tests.support.problems import where
from trainer.dataset_format import DatasetKind, DatasetWriter

PICK_SCHEMA = pa.schema(
    [
        ("caption", pa.string()),
        ("jpg_0", pa.binary()),
        ("jpg_1", pa.binary()),
        ("label_0", pa.float64()),
        ("label_1", pa.float64()),
    ]
)
TARGETS_SCHEMA = pa.schema([("prompt", pa.string()), ("image", pa.binary())])


def pick_row(**overrides: object) -> dict[str, object]:
    return {"caption": "ok", "jpg_0": png(), "jpg_1": png(COOL), "label_0": 1.0, "label_1": 0.0} | overrides


def collect(dest: Path, kind: DatasetKind) -> tuple[DatasetWriter, PairCollector]:
    writer = DatasetWriter(dest, kind=kind)
    return writer, PairCollector(writer, IngestLimits())


# --- rows numbered from an offset --------------------------------------------------------------------


def test_pairs_parquet_rows_are_numbered_from_first_row(tmp_path: Path) -> None:
    rows = [pick_row(), pick_row(jpg_1=b"\x89PNG garbage")]
    upload = make_parquet(tmp_path / "p.parquet", rows, PICK_SCHEMA)
    writer, collector = collect(tmp_path / "ds", "pairs")
    with writer:
        ingest_parquet(upload, collector, first_row=100)
    assert where(collector.problems) == {(101, "jpg_1")}


def test_targets_parquet_rows_are_numbered_from_first_row(tmp_path: Path) -> None:
    rows = [{"prompt": "a", "image": png()}, {"prompt": "", "image": png()}]
    upload = make_parquet(tmp_path / "t.parquet", rows, TARGETS_SCHEMA)
    writer, collector = collect(tmp_path / "ds", "targets")
    with writer:
        ingest_parquet_targets(upload, collector, first_row=7)
    assert where(collector.problems) == {(8, "prompt")}

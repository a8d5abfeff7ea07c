"""Reading a Pick-a-Pic style parquet upload in small batches: caption, jpg_0, jpg_1, label_0, label_1,
and optionally mask (encoded image bytes, null on a row without one)."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from api.services.ingest.collector import PairCollector, StopIngest
from api.services.ingest.images import ImageProblem, inspect_image
from api.services.ingest.limits import RATIO_FLOOR_BYTES
from api.services.ingest.masks import MASK_FIELD, RowMask, has_mask, refuse_black
from api.services.ingest.members import ByteBudget, LimitExceeded
from trainer.dataset_format import EncodedImage

# Small batches: a row holds two encoded images and a mask of up to max_image_bytes each.
BATCH_ROWS = 16

# A column's expected type: how to name it in a message, and the test of an arrow type.
ColumnType = tuple[str, Callable[[Any], bool]]
TEXT: ColumnType = ("text", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t))
IMAGE_BYTES: ColumnType = (
    "binary image bytes",
    lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t),
)
NUMBER: ColumnType = ("a number", lambda t: pa.types.is_floating(t) or pa.types.is_integer(t))

_COLUMNS: dict[str, ColumnType] = {
    "caption": TEXT,
    "jpg_0": IMAGE_BYTES,
    "jpg_1": IMAGE_BYTES,
    "label_0": NUMBER,
    "label_1": NUMBER,
    MASK_FIELD: IMAGE_BYTES,
}


def ingest_parquet(
    upload: Path, collector: PairCollector, *, first_row: int = 0, budget: ByteBudget | None = None
) -> None:
    """Check every row of the parquet file and hand the valid, non-tie pairs to `collector`.

    Rows are numbered from `first_row` in problems, and the decoded bytes are charged to `budget` (a new
    one of the collector's limit if None), so that an upload read in several files (shards) names each
    row by its place in the whole upload and is held to one limit over all of them."""
    rows = read_rows(upload, collector, _COLUMNS, optional=frozenset({MASK_FIELD}), budget=budget)
    for row, record in enumerate(rows, start=first_row):
        _ingest_row(row, record, collector)


def read_rows(
    upload: Path,
    collector: PairCollector,
    columns: dict[str, ColumnType],
    *,
    optional: frozenset[str] = frozenset(),
    budget: ByteBudget | None = None,
) -> Iterator[dict[str, Any]]:
    """The rows as dicts of `columns` (those in `optional` only where the file has them), read BATCH_ROWS
    at a time, their decoded bytes charged to `budget` (one of the collector's limit if None); parquet
    errors become a fatal problem.

    Only reading is inside the `try`: an error while writing the dataset is the server's, not the upload's.
    """
    budget = budget or ByteBudget(
        collector.limits.max_uncompressed_bytes,
        f"parquet file expands to more than {collector.limits.max_uncompressed_bytes} bytes",
    )
    try:
        with pq.ParquetFile(upload) as parquet:
            present = _check_schema(parquet.schema_arrow, columns, optional, collector)
            _check_declared_size(parquet.metadata, upload.stat().st_size, collector)
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=present):
                budget.spend(int(batch.nbytes))
                yield from _rows_of(batch)
    except LimitExceeded as exc:
        collector.fatal(str(exc))
    except (pa.ArrowException, OSError) as exc:
        collector.fatal(f"not a readable parquet file: {exc}")


def _rows_of(batch: pa.RecordBatch) -> list[dict[str, Any]]:
    """The batch's rows as dicts. Parquet does not check that a text column holds UTF-8: where one does
    not, its values are decoded with surrogateescape, so that the prompt check names the row and field
    (`PairCollector.check_prompt`) instead of the whole read failing."""
    try:
        rows: list[dict[str, Any]] = batch.to_pylist()
        return rows
    except UnicodeDecodeError:
        columns = [_values(batch.column(i)) for i in range(batch.num_columns)]
        return [dict(zip(batch.schema.names, values, strict=True)) for values in zip(*columns, strict=True)]


def _values(column: pa.Array) -> list[Any]:
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        raw = column.cast(pa.large_binary()).to_pylist()
        return [None if value is None else value.decode("utf-8", "surrogateescape") for value in raw]
    return list(column.to_pylist())


def _check_schema(
    schema: Any, columns: dict[str, ColumnType], optional: frozenset[str], collector: PairCollector
) -> list[str]:
    """The names of the columns to read; stops the ingest if one is missing or of the wrong type."""
    names = set(schema.names)
    present = []
    for column, (wanted, accepts) in columns.items():
        if column not in names:
            if column not in optional:
                collector.report(None, column, "missing column")
        elif not accepts(schema.field(column).type):
            collector.report(None, column, f"must be {wanted}, not {schema.field(column).type}")
        else:
            present.append(column)
    if collector.problems:
        raise StopIngest("parquet columns unusable")
    return present


def _check_declared_size(metadata: Any, file_bytes: int, collector: PairCollector) -> None:
    limits = collector.limits
    declared = sum(int(metadata.row_group(i).total_byte_size) for i in range(metadata.num_row_groups))
    if declared > limits.max_uncompressed_bytes:
        collector.fatal(
            f"parquet file declares {declared} bytes, over the limit of {limits.max_uncompressed_bytes}"
        )
    if declared > RATIO_FLOOR_BYTES and declared > file_bytes * limits.max_compression_ratio:
        collector.fatal(f"parquet file expands more than {limits.max_compression_ratio:g} times")


def _ingest_row(row: int, record: dict[str, Any], collector: PairCollector) -> None:
    labels = [_label(row, field, record[field], collector) for field in ("label_0", "label_1")]
    if labels[0] is not None and labels[1] is not None and labels[0] == labels[1]:
        collector.drop_tie()
        return
    collector.admit_row(row)
    prompt = collector.check_prompt(row, "caption", record["caption"])
    # Without both labels the order is unknown, but both images are still checked and reported.
    swap = labels[0] is not None and labels[1] is not None and labels[1] > labels[0]
    first, second = ("jpg_1", "jpg_0") if swap else ("jpg_0", "jpg_1")
    chosen = row_image(row, first, record[first], collector)
    rejected = row_image(row, second, record[second], collector)
    mask = row_mask(row, record, collector)
    if None in labels or prompt is None or chosen is None or rejected is None or mask is None:
        return
    collector.add_pair(prompt, chosen=chosen, rejected=rejected, mask=mask.image)


def _label(row: int, field: str, value: object, collector: PairCollector) -> float | None:
    if value is None:
        collector.report(row, field, "missing value")
        return None
    if not isinstance(value, int | float) or not math.isfinite(value):
        collector.report(row, field, f"must be a finite number, not {value!r}")
        return None
    return float(value)


def row_image(row: int, field: str, value: object, collector: PairCollector) -> EncodedImage | None:
    """The checked image bytes of a row's field, or None after reporting what is wrong with them."""
    if not isinstance(value, bytes) or not value:
        collector.report(row, field, "missing image bytes")
        return None
    try:
        suffix = inspect_image(io.BytesIO(value), size=len(value), limits=collector.limits)
    except ImageProblem as exc:
        collector.report(row, field, str(exc))
        return None
    return EncodedImage(value, suffix)


def row_mask(row: int, record: dict[str, Any], collector: PairCollector) -> RowMask | None:
    """The row's optional `mask` (null or empty bytes: none), or None after reporting what is wrong with
    it (not an image, over the image limits, black everywhere)."""
    if not has_mask(record):
        return RowMask(None)
    value = record[MASK_FIELD]
    mask = row_image(row, MASK_FIELD, value, collector)
    if mask is None:
        return None
    try:
        refuse_black(io.BytesIO(value))  # bytes: row_image has checked them
    except ImageProblem as exc:
        collector.report(row, MASK_FIELD, str(exc))
        return None
    return RowMask(mask)

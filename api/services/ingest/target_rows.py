"""Rows of a targets or avoid upload: a prompt, one image, and what the base model is to draw beside it.

Archives hold pairs.jsonl or pairs.csv rows `{"prompt", "image", "generation_prompt"}` and optionally
`"mask"` (image paths as in a pairs upload); parquet files hold the columns `prompt`, `image` (encoded
bytes), `generation_prompt` and optionally `mask` (encoded bytes, null on a row without one). The
generation prompt is required in an avoid upload (the chosen image is drawn from it) and optional in a
targets upload (the rejected image is drawn from the prompt itself when it is absent).
"""

from __future__ import annotations

from pathlib import Path

from api.services.ingest.archive_pairs import row_image as archive_image
from api.services.ingest.archive_pairs import row_mask, row_prompt
from api.services.ingest.collector import PairCollector
from api.services.ingest.masks import MASK_FIELD
from api.services.ingest.members import ByteBudget, MemberIndex
from api.services.ingest.pairs_file import Record, locate_pairs_file, read_records
from api.services.ingest.parquet_reader import IMAGE_BYTES, TEXT, read_rows
from api.services.ingest.parquet_reader import row_image as parquet_image
from api.services.ingest.parquet_reader import row_mask as parquet_mask
from trainer.dataset_format import UPLOADED_ROLE, EncodedImage

GENERATION_PROMPT = "generation_prompt"


class _Invalid:
    """A generation prompt that was reported as wrong (unlike None, which means "not given")."""


INVALID = _Invalid()


def ingest_archive_targets(index: MemberIndex, collector: PairCollector) -> None:
    """Check every row of the archive's manifest and hand the valid ones to `collector`."""
    manifest, base = locate_pairs_file(index.names, collector)
    fields = ("prompt", "image", GENERATION_PROMPT) if collector.kind == "avoid" else ("prompt", "image")
    for row, record in read_records(index.files[manifest], manifest, collector, fields):
        collector.admit_row(row)
        _refuse_pair_fields(record, row, collector)
        prompt = row_prompt(record, row, collector)
        generation_prompt = _generation_prompt(record.get(GENERATION_PROMPT), row, collector)
        image = archive_image(index, base, record, row, "image", collector)
        mask = row_mask(index, base, record, row, collector)
        if prompt is None or image is None or mask is None or isinstance(generation_prompt, _Invalid):
            continue
        collector.add_target(
            prompt, image=EncodedImage(*image), generation_prompt=generation_prompt, mask=mask.image
        )


def ingest_parquet_targets(
    upload: Path, collector: PairCollector, *, first_row: int = 0, budget: ByteBudget | None = None
) -> None:
    """Check every row of a targets/avoid parquet file and hand the valid ones to `collector`; rows are
    numbered from `first_row` and decoded bytes charged to `budget`, as `ingest_parquet`'s."""
    columns = {"prompt": TEXT, "image": IMAGE_BYTES, GENERATION_PROMPT: TEXT, MASK_FIELD: IMAGE_BYTES}
    optional = frozenset({MASK_FIELD, GENERATION_PROMPT} if collector.kind == "targets" else {MASK_FIELD})
    rows = read_rows(upload, collector, columns, optional=optional, budget=budget)
    for row, record in enumerate(rows, start=first_row):
        collector.admit_row(row)
        prompt = collector.check_prompt(row, "prompt", record["prompt"])
        generation_prompt = _generation_prompt(record.get(GENERATION_PROMPT), row, collector)
        image = parquet_image(row, "image", record["image"], collector)
        mask = parquet_mask(row, record, collector)
        if prompt is None or image is None or mask is None or isinstance(generation_prompt, _Invalid):
            continue
        collector.add_target(prompt, image=image, generation_prompt=generation_prompt, mask=mask.image)


def _generation_prompt(value: object, row: int, collector: PairCollector) -> str | _Invalid | None:
    """The row's generation prompt; None where it may be left out (blank counts as left out)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if collector.kind == "targets":
            return None
        collector.report(row, GENERATION_PROMPT, "missing: an avoid dataset's chosen image is drawn from it")
        return INVALID
    checked = collector.check_prompt(row, GENERATION_PROMPT, value)
    return INVALID if checked is None else checked


def _refuse_pair_fields(record: Record, row: int, collector: PairCollector) -> None:
    """A chosen or rejected path in a one-sided row would be silently ignored: say so instead."""
    uploaded = UPLOADED_ROLE[collector.kind]
    for field in ("chosen", "rejected"):
        if record.get(field) not in (None, ""):
            collector.report(
                row,
                field,
                f"not part of a {collector.kind} upload: its `image` is the {uploaded} side and the base "
                "model draws the other; to upload both images of each pair, use kind=pairs",
            )

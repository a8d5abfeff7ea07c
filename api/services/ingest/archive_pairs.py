"""Turning an extracted archive into pairs: each manifest row's prompt, its two images and its mask."""

from __future__ import annotations

import posixpath
from pathlib import Path

from api.services.ingest.collector import PairCollector
from api.services.ingest.images import ImageProblem, inspect_image
from api.services.ingest.limits import IngestLimits
from api.services.ingest.masks import MASK_FIELD, RowMask, has_mask, refuse_black
from api.services.ingest.members import MemberIndex, normalise_name, unsafe_name_reason
from api.services.ingest.pairs_file import PAIR_FIELDS, Record, locate_pairs_file, read_records
from trainer.dataset_format import EncodedImage

# A checked image still in scratch: where it is and the suffix it is stored under.
CheckedImage = tuple[Path, str]


def ingest_archive_rows(index: MemberIndex, collector: PairCollector) -> None:
    """Check every row of the archive's manifest and hand the valid pairs to `collector`."""
    manifest, base = locate_pairs_file(index.names, collector)
    for row, record in read_records(index.files[manifest], manifest, collector, PAIR_FIELDS):
        collector.admit_row(row)
        prompt = row_prompt(record, row, collector)
        chosen = row_image(index, base, record, row, "chosen", collector)
        rejected = row_image(index, base, record, row, "rejected", collector)
        mask = row_mask(index, base, record, row, collector)
        if chosen is not None and rejected is not None and chosen[0] == rejected[0]:
            collector.report(row, "rejected", "is the same image as chosen")
            continue
        if prompt is not None and chosen is not None and rejected is not None and mask is not None:
            collector.add_pair(
                prompt, chosen=EncodedImage(*chosen), rejected=EncodedImage(*rejected), mask=mask.image
            )


def row_prompt(record: Record, row: int, collector: PairCollector) -> str | None:
    """The row's checked prompt, or None after reporting what is wrong with it."""
    if "prompt" not in record:
        collector.report(row, "prompt", "missing")
        return None
    return collector.check_prompt(row, "prompt", record["prompt"])


def row_image(
    index: MemberIndex, base: str, record: Record, row: int, field: str, collector: PairCollector
) -> CheckedImage | None:
    """The checked image a row's field points at, or None after reporting what is wrong with it."""
    if field not in record:
        collector.report(row, field, "missing")
        return None
    try:
        return _resolve(index, base, record[field], collector.limits)
    except ImageProblem as exc:
        collector.report(row, field, str(exc))
        return None


def row_mask(
    index: MemberIndex, base: str, record: Record, row: int, collector: PairCollector
) -> RowMask | None:
    """The row's optional mask, or None after reporting what is wrong with it (missing file, not an
    image, black everywhere)."""
    if not has_mask(record):
        return RowMask(None)
    checked = row_image(index, base, record, row, MASK_FIELD, collector)
    if checked is None:
        return None
    try:
        refuse_black(checked[0])
    except ImageProblem as exc:
        collector.report(row, MASK_FIELD, str(exc))
        return None
    return RowMask(EncodedImage(*checked))


def _resolve(index: MemberIndex, base: str, path: object, limits: IngestLimits) -> CheckedImage:
    if not isinstance(path, str) or not path.strip():
        raise ImageProblem("must be a non-empty image path inside the archive")
    if unsafe_name_reason(path) is not None:
        raise ImageProblem(f"image path {path!r} must be relative and stay inside the archive")
    return stored_image(index, normalise_name(posixpath.join(base, path)), limits)


def stored_image(index: MemberIndex, key: str, limits: IngestLimits) -> CheckedImage:
    """The checked image of the member `key` (a normalised name); `ImageProblem` names what is wrong."""
    if key in index.refused:
        raise ImageProblem(f"image {key!r} is an archive member that was refused")
    stored = index.files.get(key)
    if stored is None:
        raise ImageProblem(f"image {key!r} is not in the archive")
    with stored.open("rb") as image:
        suffix = inspect_image(image, size=stored.stat().st_size, limits=limits)
    return stored, suffix

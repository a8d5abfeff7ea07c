"""The optional mask of a row, white where the preference applies: a manifest row's `mask` (an image in
the archive), a parquet row's `mask` column (encoded bytes, null for none) or a pair folder's m/<name>.

A mask may have any size (the trainer stretches it onto the pair's images) and any mode (it is read as
grayscale). One that is black everywhere would train on nothing, so it is refused here rather than left
to the loss to notice.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, NamedTuple

from PIL import Image

from api.services.ingest.images import ImageProblem
from trainer.dataset_format import EncodedImage

MASK_FIELD = "mask"


class RowMask(NamedTuple):
    """A row's checked mask, or None where the row has none (so that None itself can mean "reported")."""

    image: EncodedImage | None


def has_mask(record: dict[str, object]) -> bool:
    """Whether a row names a mask: absent, null and blank (a CSV's empty cell, empty bytes) all mean none."""
    return record.get(MASK_FIELD) not in (None, "", b"")


def refuse_black(mask: Path | BinaryIO) -> None:
    """Raise `ImageProblem` if the (already checked, decodable) mask has no pixel above black."""
    with Image.open(mask) as image:
        brightest = image.convert("L").getextrema()[1]
    if brightest == 0:
        raise ImageProblem("mask is black everywhere: white marks where the preference applies")

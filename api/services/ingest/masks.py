"""The optional `mask` of a manifest row: an image in the archive, white where the preference applies.

A mask may have any size (the trainer stretches it onto the pair's images) and any mode (it is read as
grayscale). One that is black everywhere would train on nothing, so it is refused here rather than left
to the loss to notice.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from api.services.ingest.images import ImageProblem

MASK_FIELD = "mask"


def has_mask(record: dict[str, object]) -> bool:
    """Whether a row names a mask: absent and blank (a CSV's empty cell) both mean none."""
    return record.get(MASK_FIELD) not in (None, "")


def refuse_black(mask: Path) -> None:
    """Raise `ImageProblem` if the (already checked, decodable) mask has no pixel above black."""
    with Image.open(mask) as image:
        brightest = image.convert("L").getextrema()[1]
    if brightest == 0:
        raise ImageProblem("mask is black everywhere: white marks where the preference applies")

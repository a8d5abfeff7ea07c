"""Builders for masked uploads beyond manifests: parquet rows with a `mask` column, and pair folders
(w/, l/) with an m/ folder of masks beside them."""

from __future__ import annotations

import io
from collections.abc import Mapping

import pyarrow as pa
from PIL import Image

from tests.support.archives import COOL, PICK_SCHEMA, TARGETS_GENERATION_SCHEMA, TARGETS_SCHEMA, WARM, png

MASK_COLUMN = pa.field("mask", pa.binary())
PICK_MASK_SCHEMA = PICK_SCHEMA.append(MASK_COLUMN)
TARGETS_MASK_SCHEMA = TARGETS_SCHEMA.append(MASK_COLUMN)
AVOID_MASK_SCHEMA = TARGETS_GENERATION_SCHEMA.append(MASK_COLUMN)


def mask_image(
    *, white: bool = True, size: tuple[int, int] = (8, 8), mode: str = "L", fmt: str = "PNG"
) -> bytes:
    """A mask white over its left half (black everywhere unless `white`), in any mode and format."""
    image = Image.new("L", size, 0)
    if white:
        image.paste(255, (0, 0, max(1, size[0] // 2), size[1]))
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, fmt)
    return buffer.getvalue()


def pick_row(index: int, *, mask: bytes | None = None, **overrides: object) -> dict[str, object]:
    """A Pick-a-Pic row whose jpg_0 (WARM) is preferred, with `mask` (None: no mask)."""
    row = {
        "caption": f"a warm shape {index}",
        "jpg_0": png(WARM),
        "jpg_1": png(COOL),
        "label_0": 1.0,
        "label_1": 0.0,
        "mask": mask,
    }
    return row | overrides


def target_row(index: int, *, mask: bytes | None = None, **overrides: object) -> dict[str, object]:
    """A targets row of a WARM image and `mask` (None: no mask)."""
    return {"prompt": f"a warm shape {index}", "image": png(WARM), "mask": mask} | overrides


def masked_folders(masks: Mapping[str, bytes | None], prefix: str = "") -> dict[str, bytes]:
    """Pair folders: a WARM w/<name> and a COOL l/<name> for each name of `masks`, captioned by
    <stem>.txt, and m/<stem>.<format of the mask> for each name whose mask is not None (so a JPEG mask
    beside PNG images has another suffix than its pair, as w/ and l/ may)."""
    files: dict[str, bytes] = {}
    for name, mask in masks.items():
        stem = name.rsplit(".", 1)[0]
        files[f"{prefix}w/{name}"], files[f"{prefix}l/{name}"] = png(WARM), png(COOL)
        files[f"{prefix}{stem}.txt"] = f"a warm {stem}".encode()
        if mask is not None:
            files[f"{prefix}m/{stem}{_suffix(mask)}"] = mask
    return files


def _suffix(image: bytes) -> str:
    with Image.open(io.BytesIO(image)) as opened:
        return ".jpg" if opened.format == "JPEG" else f".{str(opened.format).lower()}"

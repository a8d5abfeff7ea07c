"""The canonical on-disk layout of a preference dataset. Torch-free: the API writes it, the trainer reads it.

```
<dataset_dir>/
    manifest.json          {"format": "mapo-pairs", "version": 1, "num_pairs": N, "pairs_file": "pairs.jsonl"}
    pairs.jsonl            one JSON object per pair: {"prompt", "chosen", "rejected"}, image paths relative
                           to <dataset_dir>, always under images/
    images/                the image files, encoded as uploaded (PNG, JPEG, WebP)
```
The manifest is written last, so a directory without one is incomplete and never read.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

FORMAT_NAME: Literal["mapo-pairs"] = "mapo-pairs"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
PAIRS_FILE = "pairs.jsonl"
IMAGES_DIR = "images"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class DatasetFormatError(ValueError):
    """The directory is not a complete, well-formed dataset in the canonical layout."""


class Manifest(BaseModel):
    """Summary of a dataset directory, written after every pair is in place."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["mapo-pairs"] = FORMAT_NAME
    version: int = FORMAT_VERSION
    num_pairs: int = Field(ge=0)
    pairs_file: str = PAIRS_FILE


class PairRecord(BaseModel):
    """One preference pair: the chosen ("winner") image is preferred over the rejected one for the prompt."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    chosen: str = Field(description="Image path relative to the dataset directory.")
    rejected: str = Field(description="Image path relative to the dataset directory.")


class EncodedImage(NamedTuple):
    """An image as stored: its encoded bytes (or a binary stream of them) and its file suffix."""

    data: bytes | BinaryIO
    suffix: str = ".png"


class DatasetWriter:
    """Writes pairs into the canonical layout; `close()` writes the manifest that marks it complete.

    Image bytes are copied from file objects in chunks, so no whole image set is held in memory.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        self._pairs = (root / PAIRS_FILE).open("w", encoding="utf-8")
        self.num_pairs = 0

    def add_pair(self, prompt: str, *, chosen: EncodedImage, rejected: EncodedImage) -> PairRecord:
        """Store one pair of already-encoded images; streams are copied in chunks."""
        index = self.num_pairs
        names = [self._store(index, "chosen", chosen), self._store(index, "rejected", rejected)]
        record = PairRecord(prompt=prompt, chosen=names[0], rejected=names[1])
        self._pairs.write(record.model_dump_json() + "\n")
        self.num_pairs += 1
        return record

    def _store(self, index: int, role: str, image: EncodedImage) -> str:
        suffix = image.suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            raise DatasetFormatError(f"unsupported image suffix {image.suffix!r}")
        relative = f"{IMAGES_DIR}/{index:06d}_{role}{suffix}"
        with (self.root / relative).open("wb") as out:
            if isinstance(image.data, bytes):
                out.write(image.data)
            else:
                shutil.copyfileobj(image.data, out, length=1 << 20)
        return relative

    def close(self) -> Manifest:
        """Flush the pairs file to disk, then write the manifest atomically."""
        self._pairs.flush()
        os.fsync(self._pairs.fileno())
        self._pairs.close()
        manifest = Manifest(num_pairs=self.num_pairs)
        tmp = self.root / (MANIFEST_FILE + ".tmp")
        tmp.write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
        os.replace(tmp, self.root / MANIFEST_FILE)
        return manifest

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._pairs.close()


def read_manifest(root: Path) -> Manifest:
    """Read and check the manifest; raises `DatasetFormatError` if the dataset is missing or incomplete."""
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise DatasetFormatError(f"{root} has no {MANIFEST_FILE}: not a complete mapo-pairs dataset")
    try:
        return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DatasetFormatError(f"{path} is not a valid manifest: {exc}") from exc


def iter_pairs(root: Path) -> Iterator[PairRecord]:
    """Yield the pairs in file order, checking that each points at an image inside the dataset."""
    manifest = read_manifest(root)
    with (root / manifest.pairs_file).open(encoding="utf-8") as lines:
        for row, line in enumerate(lines):
            try:
                record = PairRecord.model_validate(json.loads(line))
            except ValueError as exc:
                raise DatasetFormatError(f"{PAIRS_FILE} row {row}: {exc}") from exc
            for field in ("chosen", "rejected"):
                _check_image_path(root, getattr(record, field), row=row, field=field)
            yield record


def read_pairs(root: Path) -> list[PairRecord]:
    """All pairs of a dataset (records only, a few hundred bytes each; images stay on disk)."""
    pairs = list(iter_pairs(root))
    expected = read_manifest(root).num_pairs
    if len(pairs) != expected:
        raise DatasetFormatError(f"manifest says {expected} pairs but {PAIRS_FILE} has {len(pairs)}")
    return pairs


def _check_image_path(root: Path, relative: str, *, row: int, field: str) -> None:
    if not relative.startswith(IMAGES_DIR + "/") or ".." in Path(relative).parts:
        raise DatasetFormatError(f"{PAIRS_FILE} row {row}, field {field}: path {relative!r} leaves images/")
    if not (root / relative).is_file():
        raise DatasetFormatError(f"{PAIRS_FILE} row {row}, field {field}: {relative} does not exist")

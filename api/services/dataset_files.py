"""Reading a stored dataset through `Storage` (a local folder or an object store alike): its manifest, its
rows line by line, and the keys of its images. The layout is `trainer.dataset_format`'s; this only reads
it, without assuming the files are on this machine."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from core.storage import CHUNK_BYTES, InvalidStorageKey, Storage, check_key
from trainer.dataset_format import (
    IMAGES_DIR,
    MANIFEST_FILE,
    DatasetFormatError,
    Manifest,
    StoredPair,
    stored_pairs,
)


def read_stored_manifest(storage: Storage, key: str) -> Manifest:
    """The manifest of the dataset at `key`; DatasetFormatError if it is missing (the upload has not
    finished: the manifest is stored last) or malformed."""
    try:
        with storage.open_read(f"{key}/{MANIFEST_FILE}") as stream:
            return Manifest.model_validate_json(stream.read())
    except FileNotFoundError:
        raise DatasetFormatError(f"{key} has no {MANIFEST_FILE}: not a complete dataset") from None
    except ValueError as exc:
        raise DatasetFormatError(f"{key}/{MANIFEST_FILE} is not a valid manifest: {exc}") from exc


def iter_uploaded_pairs(storage: Storage, key: str, manifest: Manifest) -> Iterator[StoredPair]:
    """Every pair of the dataset in file order with the image paths it holds (None for a side the base
    model draws at job start), read line by line as `trainer.dataset_format` parses them."""
    with storage.open_read(f"{key}/{manifest.pairs_file}") as stream:
        yield from stored_pairs(_lines(stream), manifest)


def image_key(key: str, relative: str) -> str:
    """The storage key of an image path a row holds; DatasetFormatError if it leaves images/."""
    try:
        check_key(relative)
    except InvalidStorageKey:
        raise DatasetFormatError(f"image path {relative!r} is not a clean relative path") from None
    if not relative.startswith(IMAGES_DIR + "/"):
        raise DatasetFormatError(f"image path {relative!r} leaves {IMAGES_DIR}/")
    return f"{key}/{relative}"


def _lines(stream: BinaryIO) -> Iterator[bytes]:
    """Lines of a binary stream read in chunks (object-store bodies have no readline)."""
    pending = b""
    while chunk := stream.read(CHUNK_BYTES):
        *lines, pending = (pending + chunk).split(b"\n")
        yield from (line for line in lines if line.strip())
    if pending.strip():
        yield pending

"""The canonical on-disk layout of a preference dataset. Torch-free: the API writes it, the trainer reads it.

```
<dataset_dir>/
    manifest.json          {"format": "mapo-pairs", "version": 1, "kind": "pairs", "num_pairs": N,
                            "pairs_file": "pairs.jsonl"}
    pairs.jsonl            one JSON object per pair: {"prompt", "chosen", "rejected"}, image paths relative
                           to <dataset_dir>, always under images/; optionally "mask": a grayscale image
                           of where the preference applies (white), for both images of the pair
    images/                the image files, encoded as uploaded (PNG, JPEG, WebP)
```
The manifest is written last, so a directory without one is incomplete and never read.

A dataset of kind "targets" or "avoid" holds one side of each pair only; its rows file is targets.jsonl,
one `{"prompt", "image", "generation_prompt"}` per pair (and optionally "mask", as in pairs.jsonl, which
the completed pairs keep). The uploaded image is the chosen side ("targets": the images the user wants)
or the rejected side ("avoid"); the worker makes the other side with the base model at job start
(`trainer.completion`), from `generation_prompt` (or the prompt itself when absent, allowed for targets
only), into a pairs dataset of its own under generated/. The two prompts differ where
the trained prompt holds a trigger word: "a photo of sks dog" trains against what the base model draws for
"a photo of dog".
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field

FORMAT_NAME: Literal["mapo-pairs"] = "mapo-pairs"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
PAIRS_FILE = "pairs.jsonl"
TARGETS_FILE = "targets.jsonl"
IMAGES_DIR = "images"
# Under a targets or avoid dataset: its completed pairs datasets, one folder each (trainer.completion).
GENERATED_DIR = "generated"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

DatasetKind = Literal["pairs", "targets", "avoid"]
Role = Literal["chosen", "rejected"]
# The side of each pair a one-sided dataset holds; the base model makes the other one.
UPLOADED_ROLE: dict[DatasetKind, Role] = {"targets": "chosen", "avoid": "rejected"}


class DatasetFormatError(ValueError):
    """The directory is not a complete, well-formed dataset in the canonical layout."""


class Manifest(BaseModel):
    """Summary of a dataset directory, written after every pair is in place."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["mapo-pairs"] = FORMAT_NAME
    version: int = FORMAT_VERSION
    kind: DatasetKind = "pairs"
    num_pairs: int = Field(ge=0)
    pairs_file: str = Field(default=PAIRS_FILE, description="The rows file: pairs.jsonl or targets.jsonl.")
    captions_missing: int | None = Field(
        default=None,
        ge=0,
        description="Rows of a captioned-images upload whose image had no caption (their prompt is the "
        "trigger word alone); None for every other upload.",
    )


class PairRecord(BaseModel):
    """One preference pair: the chosen ("winner") image is preferred over the rejected one for the prompt."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    chosen: str = Field(description="Image path relative to the dataset directory.")
    rejected: str = Field(description="Image path relative to the dataset directory.")
    mask: str | None = Field(
        default=None,
        description="Preference mask path relative to the dataset directory: white where the preference "
        "applies, to both images; None (left out of the row) trains on the whole image.",
    )


class TargetRecord(BaseModel):
    """One row of a one-sided dataset: the uploaded image, and the prompt its missing partner is made from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(description="The prompt both images of the pair are trained with.")
    image: str = Field(description="Image path relative to the dataset directory.")
    generation_prompt: str | None = Field(
        default=None,
        description="What the base model is asked to draw for the missing side; None: `prompt`. It may be "
        "empty (drawn from no prompt at all): a caption that was only a trigger word.",
    )
    mask: str | None = Field(
        default=None, description="Preference mask path relative to the dataset directory, as PairRecord's."
    )

    @property
    def drawn_from(self) -> str:
        """The prompt the base model draws the missing side from; `prompt` unless one is given."""
        return self.prompt if self.generation_prompt is None else self.generation_prompt


_Row = TypeVar("_Row", PairRecord, TargetRecord)


class EncodedImage(NamedTuple):
    """An image as stored: its encoded bytes, a binary stream of them, or a file that is hard-linked into
    the dataset (copied where the filesystem cannot link), and its file suffix."""

    data: bytes | BinaryIO | Path
    suffix: str = ".png"


class DatasetWriter:
    """Writes pairs (or, for kinds targets/avoid, one-sided rows) into the canonical layout; `close()`
    writes the manifest that marks it complete.

    Image bytes are copied from file objects in chunks, so no whole image set is held in memory.
    """

    def __init__(self, root: Path, *, kind: DatasetKind = "pairs") -> None:
        self.root, self.kind = root, kind
        (root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        self.rows_file = PAIRS_FILE if kind == "pairs" else TARGETS_FILE
        self._rows = (root / self.rows_file).open("w", encoding="utf-8")
        self.num_pairs = 0
        self.captions_missing: int | None = None  # recorded in the manifest; see Manifest

    def add_pair(
        self, prompt: str, *, chosen: EncodedImage, rejected: EncodedImage, mask: EncodedImage | None = None
    ) -> PairRecord:
        """Store one pair of already-encoded images (and its mask); streams are copied in chunks."""
        if self.kind != "pairs":
            raise DatasetFormatError(f"a {self.kind} dataset holds one image per row; use add_target")
        index = self.num_pairs
        names = [
            store_image(self.root, index, "chosen", chosen),
            store_image(self.root, index, "rejected", rejected),
        ]
        mask_name = None if mask is None else store_image(self.root, index, "mask", mask)
        return self._write(PairRecord(prompt=prompt, chosen=names[0], rejected=names[1], mask=mask_name))

    def add_target(
        self,
        prompt: str,
        *,
        image: EncodedImage,
        generation_prompt: str | None,
        mask: EncodedImage | None = None,
    ) -> TargetRecord:
        """Store one row of a targets/avoid dataset; the image is stored under the role it plays."""
        if self.kind == "pairs":
            raise DatasetFormatError("a pairs dataset holds two images per row; use add_pair")
        if generation_prompt is None and self.kind == "avoid":
            raise DatasetFormatError("an avoid dataset needs a generation_prompt on every row")
        name = store_image(self.root, self.num_pairs, UPLOADED_ROLE[self.kind], image)
        mask_name = None if mask is None else store_image(self.root, self.num_pairs, "mask", mask)
        return self._write(
            TargetRecord(prompt=prompt, image=name, generation_prompt=generation_prompt, mask=mask_name)
        )

    def _write(self, record: _Row) -> _Row:
        # A row without a mask is written as before masks existed.
        unset = {"mask"} if record.mask is None else None
        self._rows.write(record.model_dump_json(exclude=unset) + "\n")
        self.num_pairs += 1
        return record

    def close(self) -> Manifest:
        """Flush the rows file to disk, then write the manifest atomically."""
        self._rows.flush()
        os.fsync(self._rows.fileno())
        self._rows.close()
        manifest = Manifest(
            kind=self.kind,
            num_pairs=self.num_pairs,
            pairs_file=self.rows_file,
            captions_missing=self.captions_missing,
        )
        write_manifest(self.root, manifest)
        return manifest

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._rows.close()


def store_image(root: Path, index: int, role: str, image: EncodedImage) -> str:
    """Write an encoded image as images/<index>_<role><suffix> under `root`; returns that relative path."""
    suffix = image.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise DatasetFormatError(f"unsupported image suffix {image.suffix!r}")
    relative = f"{IMAGES_DIR}/{index:06d}_{role}{suffix}"
    if isinstance(image.data, Path):
        _link_or_copy(image.data, root / relative)
        return relative
    with (root / relative).open("wb") as out:
        if isinstance(image.data, bytes):
            out.write(image.data)
        else:
            shutil.copyfileobj(image.data, out, length=1 << 20)
    return relative


def _link_or_copy(source: Path, target: Path) -> None:
    # An upload's extracted files sit beside the dataset being written: a link costs no copy of the bytes
    # (a third of an archive's ingest time with small images), and the files are never modified.
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Write the manifest atomically: the last file of a dataset, which marks it complete. The temporary
    name is unique, so two writers of the same folder (two workers completing one dataset) never mix."""
    tmp = root / f"{MANIFEST_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # Unset optional fields are left out: every manifest but a captioned upload's reads as before.
    tmp.write_text(manifest.model_dump_json(indent=2, exclude_none=True), encoding="utf-8")
    os.replace(tmp, root / MANIFEST_FILE)


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
    if manifest.kind != "pairs":
        raise DatasetFormatError(
            f"{root} is a {manifest.kind} dataset: its pairs are completed with the base model's images "
            "when a job starts"
        )
    for row, record in _iter_rows(root, manifest, PairRecord):
        for field in ("chosen", "rejected"):
            _check_image_path(root, manifest, getattr(record, field), row=row, field=field)
        if record.mask is not None:
            _check_image_path(root, manifest, record.mask, row=row, field="mask")
        yield record


def iter_targets(root: Path) -> Iterator[TargetRecord]:
    """Yield the rows of a targets or avoid dataset in file order, checking each image path."""
    manifest = read_manifest(root)
    if manifest.kind == "pairs":
        raise DatasetFormatError(f"{root} is a pairs dataset, not a targets or avoid one")
    for row, record in _iter_rows(root, manifest, TargetRecord):
        _check_image_path(root, manifest, record.image, row=row, field="image")
        if record.mask is not None:
            _check_image_path(root, manifest, record.mask, row=row, field="mask")
        if manifest.kind == "avoid" and record.generation_prompt is None:
            raise DatasetFormatError(
                f"{manifest.pairs_file} row {row}: an avoid row needs a generation_prompt"
            )
        yield record


def read_targets(root: Path) -> list[TargetRecord]:
    """All rows of a targets or avoid dataset (records only; images stay on disk)."""
    rows = list(iter_targets(root))
    expected = read_manifest(root).num_pairs
    if len(rows) != expected:
        raise DatasetFormatError(f"manifest says {expected} rows but {TARGETS_FILE} has {len(rows)}")
    return rows


class StoredPair(NamedTuple):
    """One pair of a dataset of any kind as uploaded: a side that the base model draws at job start
    (in a targets or avoid dataset) is None."""

    prompt: str
    chosen: str | None
    rejected: str | None
    mask: str | None = None


def stored_pairs(lines: Iterable[str | bytes], manifest: Manifest) -> Iterator[StoredPair]:
    """Every pair of a dataset of any kind in file order, with the image paths it holds, from the lines
    of its rows file read from any stream (a local file, an object-store body)."""
    if manifest.kind == "pairs":
        for _, pair in parse_rows(lines, manifest, PairRecord):
            yield StoredPair(pair.prompt, pair.chosen, pair.rejected, pair.mask)
        return
    uploaded_chosen = UPLOADED_ROLE[manifest.kind] == "chosen"
    for _, target in parse_rows(lines, manifest, TargetRecord):
        yield StoredPair(
            target.prompt,
            target.image if uploaded_chosen else None,
            None if uploaded_chosen else target.image,
            target.mask,
        )


def parse_rows(
    lines: Iterable[str | bytes], manifest: Manifest, model: type[_Row]
) -> Iterator[tuple[int, _Row]]:
    """(row, record) of each non-blank line, rows counted from 0; DatasetFormatError names the row."""
    for row, line in enumerate(line for line in lines if line.strip()):
        try:
            record = model.model_validate_json(line)
        except ValueError as exc:
            raise DatasetFormatError(f"{manifest.pairs_file} row {row}: {exc}") from exc
        yield row, record


def _iter_rows(root: Path, manifest: Manifest, model: type[_Row]) -> Iterator[tuple[int, _Row]]:
    with (root / manifest.pairs_file).open(encoding="utf-8") as lines:
        yield from parse_rows(lines, manifest, model)


def read_pairs(root: Path) -> list[PairRecord]:
    """All pairs of a dataset (records only, a few hundred bytes each; images stay on disk)."""
    pairs = list(iter_pairs(root))
    expected = read_manifest(root).num_pairs
    if len(pairs) != expected:
        raise DatasetFormatError(f"manifest says {expected} pairs but {PAIRS_FILE} has {len(pairs)}")
    return pairs


def _check_image_path(root: Path, manifest: Manifest, relative: str, *, row: int, field: str) -> None:
    where = f"{manifest.pairs_file} row {row}, field {field}"
    if not relative.startswith(IMAGES_DIR + "/") or ".." in Path(relative).parts:
        raise DatasetFormatError(f"{where}: path {relative!r} leaves images/")
    if not (root / relative).is_file():
        raise DatasetFormatError(f"{where}: {relative} does not exist")

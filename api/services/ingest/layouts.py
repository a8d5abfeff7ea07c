"""Which layout an archive holds, read from its member names alone (before any image is extracted).

- `manifest`: pairs.jsonl or pairs.csv at the root or in the single top-level folder (any kind).
- `pair_folders` (kind pairs): folders w/ and l/ there, the chosen and the rejected image of each pair
  under the same name, captioned by captions.jsonl beside them or else by <name>.txt files beside them.
- `captions` (kind targets): image files anywhere, each captioned by the .txt file of the same name.
- `parquet_shards` (any kind): nothing but .parquet files, in any folders (Hugging Face's
  data/train-00000-of-00004.parquet), each with the columns of a single parquet upload, read in name order.
  Without a manifest, .parquet files beside anything else (images, a README) are refused: which of them
  is the dataset would be a guess. Hidden files (.DS_Store, ._x) are ignored, as everywhere.

A manifest always wins, so every archive that was valid before these layouts reads as it did (but for one
that held .parquet files beside pair folders or captioned images, now refused as mixed).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from api.services.ingest.collector import PairCollector
from api.services.ingest.pairs_file import MANIFEST_NAMES
from trainer.dataset_format import IMAGE_SUFFIXES

LayoutName = Literal["manifest", "captions", "pair_folders", "parquet_shards"]
CHOSEN_DIR, REJECTED_DIR = "w/", "l/"
CAPTIONS_FILE = "captions.jsonl"
CAPTION_SUFFIX = ".txt"
PARQUET_SUFFIX = ".parquet"


@dataclass(frozen=True)
class Layout:
    """An archive's layout and the folder ("" or "top/") its paths are relative to."""

    name: LayoutName
    base: str


def archive_bases(names: Iterable[str]) -> list[str]:
    """Where an archive's dataset may sit: its root, and its single top-level folder if it has one (as
    zipping a folder produces)."""
    present = set(names)
    tops = {name.split("/", 1)[0] for name in present}
    if len(tops) == 1 and all("/" in name for name in present):
        return ["", f"{tops.pop()}/"]
    return [""]


def is_hidden(name: str) -> bool:
    """Whether a member is a hidden file (.DS_Store, macOS's ._x.png resource forks): never data."""
    return name.rsplit("/", 1)[-1].startswith(".")


def is_image_name(name: str) -> bool:
    """Whether a member is an image by its suffix; hidden files (.DS_Store, ._x.png) never are."""
    return not is_hidden(name) and name.lower().endswith(IMAGE_SUFFIXES)


def is_parquet_name(name: str) -> bool:
    """Whether a member is a parquet shard by its suffix (hidden files never are)."""
    return not is_hidden(name) and name.lower().endswith(PARQUET_SUFFIX)


def parquet_shard_names(names: Iterable[str]) -> list[str]:
    """The parquet shards among member names, in the order they are read (and their rows numbered)."""
    return sorted(name for name in names if is_parquet_name(name))


def stem(name: str) -> str:
    """A member name without its suffix: what an image and its caption file share."""
    leaf_start = name.rfind("/") + 1
    dot = name.rfind(".")
    return name[:dot] if dot > leaf_start else name


def detect_layout(names: set[str], collector: PairCollector) -> Layout:
    """The archive's layout from its member names (refused members included: a refused image still
    shows what the upload is); stops the ingest, saying what was looked for, if there is none."""
    bases = archive_bases(names)
    for base in bases:
        if any(base + manifest in names for manifest in MANIFEST_NAMES):
            return Layout("manifest", base)
    if any(is_parquet_name(name) for name in names):
        return _parquet_shards(names, collector)
    folders = [
        b for b in bases if _has_folder(names, b + CHOSEN_DIR) and _has_folder(names, b + REJECTED_DIR)
    ]
    if collector.kind == "pairs":
        if folders:
            return Layout("pair_folders", folders[0])
        if _is_caption_folder(names):
            collector.fatal(
                "this looks like a caption folder (images with same-name .txt captions): send kind=targets "
                "(and trigger_word, the word the adapter learns, if the captions should teach one)"
            )
        collector.fatal(
            "archive has no pairs.jsonl or pairs.csv, nor folders w/ and l/ of chosen and rejected images, "
            "at its root or in its single top-level folder"
        )
    if folders:
        # Read as captioned images, both folders would become chosen images: surely not what was meant.
        collector.fatal("folders w/ and l/ hold the two images of pairs: upload them with kind=pairs")
    if collector.kind == "targets" and any(is_image_name(name) for name in names):
        return Layout("captions", "")
    wanted = "images with .txt captions, or " if collector.kind == "targets" else ""
    collector.fatal(
        f"archive has no {wanted}pairs.jsonl or pairs.csv at its root or in its single top-level folder"
    )


def _parquet_shards(names: set[str], collector: PairCollector) -> Layout:
    others = sorted(name for name in names if not is_hidden(name) and not is_parquet_name(name))
    if others:
        shown = ", ".join(repr(name) for name in others[:3]) + (" and more" if len(others) > 3 else "")
        collector.fatal(
            f"archive holds .parquet files and other files ({shown}) but no pairs.jsonl or pairs.csv: an "
            "archive of parquet shards holds nothing else, and images need a manifest or a folder layout"
        )
    return Layout("parquet_shards", "")


def _is_caption_folder(names: set[str]) -> bool:
    """Whether some image has a caption file of the same name beside it, as the captions layout reads."""
    return any(stem(name) + CAPTION_SUFFIX in names for name in names if is_image_name(name))


def _has_folder(names: set[str], folder: str) -> bool:
    return any(name.startswith(folder) for name in names)

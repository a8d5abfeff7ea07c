"""Pair folders, the layout open preference trainers use: `w/x.png` (chosen) and `l/x.png` (rejected) under
the same name, captioned by one captions.jsonl of {"file_name": "x.png", "caption": ...} beside the two
folders or, without it, by `x.txt` beside them. Images are matched by name without the suffix, so a PNG
may be paired with a JPEG; names may include subfolders (`w/cats/1.png` pairs with `l/cats/1.jpg`, and is
captioned by `cats/1.txt` or the file_name `cats/1.png`). An optional third folder m/ beside them holds a
pair's mask under the same name (`m/cats/1.png`, matched the same way); a pair without one trains on the
whole image."""

from __future__ import annotations

from api.services.ingest.archive_pairs import CheckedImage, stored_image
from api.services.ingest.captions import MAX_CAPTION_BYTES, CaptionProblem, read_caption_file
from api.services.ingest.collector import PairCollector
from api.services.ingest.images import ImageProblem
from api.services.ingest.layouts import (
    CAPTION_SUFFIX,
    CAPTIONS_FILE,
    CHOSEN_DIR,
    REJECTED_DIR,
    is_image_name,
    stem,
)
from api.services.ingest.masks import RowMask, refuse_black
from api.services.ingest.members import MemberIndex
from api.services.ingest.pairs_file import read_records
from trainer.dataset_format import EncodedImage

CAPTION_FIELDS = ("file_name", "caption")
MASK_DIR = "m/"


def folder_images(names: set[str], folder: str) -> dict[str, str]:
    """The images under `folder` (say "top/w/") by their name there without the suffix."""
    found: dict[str, str] = {}
    for name in sorted(names):
        if name.startswith(folder) and is_image_name(name):
            found.setdefault(stem(name[len(folder) :]), name)  # the first of a name, as `_folder` keeps
    return found


def pair_folder_members(index: MemberIndex, base: str) -> set[str]:
    """Every member a pair-folders upload reads besides captions.jsonl: both folders' images, the masks
    of their pairs and the caption files beside them (but for those too large to be one)."""
    names = index.names
    chosen = folder_images(names, base + CHOSEN_DIR)
    members = set(chosen.values()) | set(folder_images(names, base + REJECTED_DIR).values())
    masks = folder_images(names, base + MASK_DIR)
    members |= {name for key, name in masks.items() if key in chosen}  # an orphan is refused unread
    captions = {base + key + CAPTION_SUFFIX for key in chosen} & names
    return members | {name for name in captions if index.sizes.get(name, 0) <= MAX_CAPTION_BYTES}


def ingest_pair_folders(index: MemberIndex, collector: PairCollector, base: str) -> None:
    """Check every pair of w/ and l/, its caption and its mask in m/ if it has one, and hand the valid
    ones to `collector`."""
    chosen = _folder(index.names, base + CHOSEN_DIR, collector)
    rejected = _folder(index.names, base + REJECTED_DIR, collector)
    masks = _folder(index.names, base + MASK_DIR, collector)
    _report_orphans(chosen, rejected=rejected, masks=masks, base=base, collector=collector)
    captions = _jsonl_captions(index, base, set(chosen), collector)
    for row, key in enumerate(sorted(chosen)):
        collector.admit_row(row)
        name = chosen[key]
        caption = _row_caption(index, base, key, name, row, captions, collector)
        prompt = None if caption is None else collector.check_prompt(row, "caption", caption.strip())
        winner = _image(index, name, row, "w", collector)
        loser = _twin(index, name, rejected.get(key), row, base, collector)
        mask = _mask(index, masks.get(key), row, collector)
        if prompt is not None and winner is not None and loser is not None and mask is not None:
            collector.add_pair(
                prompt, chosen=EncodedImage(*winner), rejected=EncodedImage(*loser), mask=mask.image
            )


def _report_orphans(
    chosen: dict[str, str],
    *,
    rejected: dict[str, str],
    masks: dict[str, str],
    base: str,
    collector: PairCollector,
) -> None:
    """A rejected image or a mask whose name is not in w/ belongs to no pair: refuse it, naming the file."""
    for key in sorted(rejected.keys() - chosen.keys()):
        collector.report(None, "w", f"{rejected[key]!r} has no twin of the same name in {base}{CHOSEN_DIR}")
    for key in sorted(masks.keys() - chosen.keys()):
        collector.report(
            None, "m", f"{masks[key]!r} masks no pair: there is no image of its name in {base}{CHOSEN_DIR}"
        )


def _row_caption(
    index: MemberIndex,
    base: str,
    key: str,
    name: str,
    row: int,
    captions: dict[str, str] | None,
    collector: PairCollector,
) -> str | None:
    """The pair's caption from captions.jsonl if there is one, else from its .txt; None if reported."""
    if captions is None:
        return _txt_caption(index, base, key, row, collector)
    if key not in captions:
        collector.report(row, "caption", f"{name!r} has no caption in {base}{CAPTIONS_FILE}")
    return captions.get(key)


def _folder(names: set[str], folder: str, collector: PairCollector) -> dict[str, str]:
    """The folder's images by key, reporting a second image under the same name and any other file."""
    found: dict[str, str] = {}
    for name in sorted(n for n in names if n.startswith(folder)):
        leaf = name.rsplit("/", 1)[-1]
        if leaf.startswith("."):
            continue  # .DS_Store and the like
        field = folder.rstrip("/").rsplit("/", 1)[-1]  # "w" or "l"
        if not is_image_name(name):
            collector.report(None, field, f"{name!r} is not a .png, .jpg, .jpeg or .webp image")
            continue
        key = stem(name[len(folder) :])
        if key in found:
            collector.report(None, field, f"{found[key]!r} and {name!r} have the same name")
            continue
        found[key] = name
    return found


def _twin(
    index: MemberIndex, name: str, twin: str | None, row: int, base: str, collector: PairCollector
) -> CheckedImage | None:
    if twin is None:
        collector.report(row, "l", f"{name!r} has no twin of the same name in {base}{REJECTED_DIR}")
        return None
    return _image(index, twin, row, "l", collector)


def _mask(index: MemberIndex, name: str | None, row: int, collector: PairCollector) -> RowMask | None:
    """The pair's mask from m/ (`name`, None if it has none), or None after reporting what is wrong with
    it (not an image, over the image limits, black everywhere)."""
    if name is None:
        return RowMask(None)
    checked = _image(index, name, row, "m", collector)
    if checked is None:
        return None
    try:
        refuse_black(checked[0])
    except ImageProblem as exc:
        collector.report(row, "m", f"{name!r}: {exc}")
        return None
    return RowMask(EncodedImage(*checked))


def _image(
    index: MemberIndex, name: str, row: int, field: str, collector: PairCollector
) -> CheckedImage | None:
    try:
        return stored_image(index, name, collector.limits)
    except ImageProblem as exc:
        collector.report(row, field, f"{name!r}: {exc}")
        return None


def _txt_caption(index: MemberIndex, base: str, key: str, row: int, collector: PairCollector) -> str | None:
    name = base + key + CAPTION_SUFFIX
    try:
        text = read_caption_file(index, name)
    except CaptionProblem as exc:
        collector.report(row, "caption", f"{name!r}: {exc}")
        return None
    if text is None:
        collector.report(
            row,
            "caption",
            f"{base}{CHOSEN_DIR}{key}.* has no caption {name!r} (nor is there a {base}{CAPTIONS_FILE})",
        )
    return text


def _jsonl_captions(
    index: MemberIndex, base: str, keys: set[str], collector: PairCollector
) -> dict[str, str] | None:
    """The captions of captions.jsonl by image key; None if the upload has no captions.jsonl.

    Its problems are reported with its own row numbers and the fields file_name and caption."""
    name = base + CAPTIONS_FILE
    if name not in index.files:
        return None
    captions: dict[str, str] = {}
    for row, record in read_records(index.files[name], name, collector, CAPTION_FIELDS):
        file_name, caption = record.get("file_name"), record.get("caption")
        if not isinstance(file_name, str) or not file_name.strip():
            collector.report(
                row, "file_name", f"{CAPTIONS_FILE}: must be the name of an image in {CHOSEN_DIR}"
            )
            continue
        key = stem(file_name.removeprefix(CHOSEN_DIR))
        if key not in keys:
            collector.report(
                row, "file_name", f"{CAPTIONS_FILE}: {file_name!r} is not an image in {base}{CHOSEN_DIR}"
            )
        elif key in captions:
            collector.report(row, "file_name", f"{CAPTIONS_FILE}: {file_name!r} is captioned twice")
        elif not isinstance(caption, str):
            collector.report(row, "caption", f"{CAPTIONS_FILE}: must be a string")
        else:
            captions[key] = caption
    return captions

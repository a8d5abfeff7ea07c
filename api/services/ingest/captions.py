"""Images with same-name caption files (`cat1.png` + `cat1.txt`), as the hosted LoRA trainers take them,
read into a targets dataset: each image is a chosen side, its caption (with the trigger word) the prompt.

Images may sit in any folder; a caption is the .txt file beside its image with the same name. An image
without a caption is trained on the trigger word alone (and counted); without a trigger word that is a
problem. A caption without an image is reported too: it is most often a misnamed image.
"""

from __future__ import annotations

from api.services.ingest.archive_pairs import CheckedImage, stored_image
from api.services.ingest.collector import PairCollector
from api.services.ingest.images import ImageProblem
from api.services.ingest.layouts import CAPTION_SUFFIX, is_image_name, stem
from api.services.ingest.limits import MAX_PROMPT_CHARS
from api.services.ingest.members import MemberIndex
from api.services.ingest.trigger import TRIGGER_PLACEHOLDER, row_prompts
from trainer.dataset_format import EncodedImage

# UTF-8 takes at most 4 bytes a character: a longer file cannot be a caption of MAX_PROMPT_CHARS.
MAX_CAPTION_BYTES = 4 * MAX_PROMPT_CHARS


class CaptionProblem(ValueError):
    """The caption file cannot be used; the message is the reason shown to the user."""


def caption_images(names: set[str]) -> list[str]:
    """The image members of a captions upload, in the order they become rows."""
    return sorted(name for name in names if is_image_name(name))


def caption_of(image: str) -> str:
    return stem(image) + CAPTION_SUFFIX


def caption_members(index: MemberIndex) -> set[str]:
    """Every member a captions upload reads: its images and the caption files beside them, but for
    caption files too large to be one (refused unread, by their declared size)."""
    images = caption_images(index.names)
    captions = {caption_of(image) for image in images} & index.names
    return set(images) | {name for name in captions if not _too_large(index, name)}


def ingest_captions(index: MemberIndex, collector: PairCollector, trigger_word: str | None) -> None:
    """Check every image and its caption and hand the valid rows to `collector`; counts the images that
    had no caption in `collector.captions_missing`."""
    images = caption_images(index.names)
    _report_orphan_captions(index.names, set(images), collector)
    collector.captions_missing = 0
    for row, image in enumerate(images):
        collector.admit_row(row)
        caption = _caption(index, image, row, collector, trigger_word)
        checked = _image(index, image, row, collector)
        if caption is None or checked is None:
            continue
        prompts = row_prompts(caption or None, trigger_word)
        prompt = collector.check_prompt(row, "caption", prompts.prompt)
        if prompt is not None:
            collector.add_target(
                prompt, image=EncodedImage(*checked), generation_prompt=prompts.generation_prompt
            )


def _caption(
    index: MemberIndex, image: str, row: int, collector: PairCollector, trigger_word: str | None
) -> str | None:
    """The image's caption ("" when it has none), or None after reporting what is wrong."""
    name = caption_of(image)
    try:
        text = read_caption_file(index, name) or ""
    except CaptionProblem as exc:
        collector.report(row, "caption", f"{name!r}: {exc}")
        return None
    if not text.strip():
        if trigger_word is None:
            collector.report(
                row, "caption", f"{image!r} has no caption {name!r} and no trigger_word is given"
            )
            return None
        collector.captions_missing = (collector.captions_missing or 0) + 1
    elif TRIGGER_PLACEHOLDER in text and trigger_word is None:
        collector.report(row, "caption", f"{name!r} has {TRIGGER_PLACEHOLDER} but no trigger_word is given")
        return None
    return text


def read_caption_file(index: MemberIndex, name: str) -> str | None:
    """The text of the caption file `name` (a normalised member name); None if the archive has none."""
    if name in index.refused:
        raise CaptionProblem("is an archive member that was refused")
    if _too_large(index, name):
        raise CaptionProblem(f"is longer than {MAX_CAPTION_BYTES} bytes")
    stored = index.files.get(name)
    if stored is None:
        return None
    with stored.open("rb") as source:
        data = source.read(MAX_CAPTION_BYTES + 1)
    if len(data) > MAX_CAPTION_BYTES:
        raise CaptionProblem(f"is longer than {MAX_CAPTION_BYTES} bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CaptionProblem(f"is not UTF-8 text: {exc}") from None


def _too_large(index: MemberIndex, name: str) -> bool:
    return index.sizes.get(name, 0) > MAX_CAPTION_BYTES


def _image(index: MemberIndex, image: str, row: int, collector: PairCollector) -> CheckedImage | None:
    try:
        return stored_image(index, image, collector.limits)
    except ImageProblem as exc:
        collector.report(row, "image", f"{image!r}: {exc}")
        return None


def _report_orphan_captions(names: set[str], images: set[str], collector: PairCollector) -> None:
    captioned = {caption_of(image) for image in images}
    for name in sorted(names):
        hidden = name.rsplit("/", 1)[-1].startswith(".")
        if name.endswith(CAPTION_SUFFIX) and name not in captioned and not hidden:
            collector.report(None, "caption", f"caption {name!r} has no image of the same name beside it")

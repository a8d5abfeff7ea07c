"""Checking one uploaded image: size, pixel count, and that it fully decodes."""

from __future__ import annotations

from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from api.services.ingest.limits import IngestLimits

# The formats the canonical layout stores, and the suffix each is stored under.
_SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}


class ImageProblem(ValueError):
    """The image cannot be used; the message is the reason shown to the user."""


def inspect_image(source: BinaryIO, *, size: int, limits: IngestLimits) -> str:
    """Check an encoded image and return the suffix it is stored under (".png", ".jpg" or ".webp").

    Args:
        source: a seekable binary stream positioned at the image's first byte.
        size: the image's length in bytes.
        limits: the byte and pixel limits.
    Raises:
        ImageProblem: naming the first thing wrong with the image.

    The pixel count is checked from the header before any pixel is decoded, so a decompression bomb
    costs a few bytes of reading. The stream is left at an unspecified position.
    """
    if size > limits.max_image_bytes:
        raise ImageProblem(f"image is {size} bytes, over the limit of {limits.max_image_bytes}")
    start = source.tell()
    try:
        with Image.open(source, formats=list(_SUFFIXES)) as image:
            _check_pixels(image.size, limits)
            suffix = _SUFFIXES[str(image.format)]
            image.verify()
        # verify() leaves the image unusable and misses truncated pixel data; a full decode catches it.
        source.seek(start)
        with Image.open(source, formats=list(_SUFFIXES)) as image:
            image.load()
    except ImageProblem:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageProblem(f"image has too many pixels: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageProblem("not a PNG, JPEG or WebP image") from exc
    except Exception as exc:
        # Decoders fail on hostile bytes with many exception types (OSError, SyntaxError, struct.error,
        # zlib.error, ...); each one means the same thing here: this image does not decode.
        raise ImageProblem(f"image does not decode: {type(exc).__name__}: {exc}") from exc
    return suffix


def _check_pixels(dimensions: tuple[int, int], limits: IngestLimits) -> None:
    width, height = dimensions
    if width * height > limits.max_image_pixels:
        raise ImageProblem(
            f"image is {width}x{height} = {width * height} pixels, "
            f"over the limit of {limits.max_image_pixels}"
        )

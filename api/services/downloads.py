"""A stored file on its way to a client: streamed through the API, or a presigned URL of the object store
when `storage_presign_downloads` is on (the client then fetches it from there, the API stays out of it)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from core.storage import CHUNK_BYTES, Storage

IMAGE_MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


class FileDownload(NamedTuple):
    """A stored file to stream back, or to redirect to (`redirect_url` set, `chunks` empty)."""

    chunks: Iterator[bytes]
    size: int
    media_type: str
    filename: str
    sha256: str | None
    redirect_url: str | None = None


def stored_download(
    storage: Storage, key: str, *, media_type: str, filename: str, sha256: str | None = None
) -> FileDownload:
    """The download of `key`; FileNotFoundError if it is not stored (also before redirecting: a URL signed
    for a missing object would send the client to the store's 404 instead of ours)."""
    size = storage.size(key)
    url = storage.download_url(key, filename=filename, media_type=media_type)
    if url is not None:
        return FileDownload(iter(()), size, media_type, filename, sha256, redirect_url=url)
    return FileDownload(_chunks(storage, key), size, media_type, filename, sha256)


def _chunks(storage: Storage, key: str) -> Iterator[bytes]:
    with storage.open_read(key) as stream:
        while chunk := stream.read(CHUNK_BYTES):
            yield chunk

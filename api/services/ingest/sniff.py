"""Recognise an upload by its first bytes, never by its name (which the client chooses freely)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

UploadKind = Literal["zip", "tar", "tar.gz", "parquet"]

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or the end record of an empty zip
_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
_TAR_MAGIC_OFFSET = 257  # POSIX ustar and GNU tar both put "ustar" here in the first header block


def sniff_kind(path: Path) -> UploadKind | None:
    """The upload's kind from its content, or None if it is none of the accepted kinds."""
    with path.open("rb") as upload:
        head = upload.read(_TAR_MAGIC_OFFSET + 5)
        size = upload.seek(0, 2)
        if size >= 8:
            upload.seek(-4, 2)
            tail = upload.read(4)
        else:
            tail = b""
    if head.startswith(_ZIP_MAGICS):
        return "zip"
    if head.startswith(_PARQUET_MAGIC) and tail == _PARQUET_MAGIC:
        return "parquet"
    if head.startswith(_GZIP_MAGIC):
        return "tar.gz"
    if head[_TAR_MAGIC_OFFSET:].startswith(b"ustar"):
        return "tar"
    return None

"""Archive members on disk: safe names, byte budgets, and the index of what was extracted.

Extracted files are stored under numbered scratch names, never under the member's own name, so no
archive name can reach the filesystem; hostile names are also refused outright so the user hears why.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from api.services.ingest.collector import PairCollector
from api.services.ingest.limits import RATIO_FLOOR_BYTES

CHUNK_BYTES = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")
# What a decompressor may raise on corrupt input while a member is being read.
READ_ERRORS = (OSError, EOFError, zlib.error, ValueError, NotImplementedError, RuntimeError)


class Readable(Protocol):
    """Anything bytes are read from in chunks: a file, a zip member, a tar member, a gzip stream."""

    def read(self, size: int = -1, /) -> bytes: ...


class LimitExceeded(Exception):
    """A size limit was crossed while reading; the message is the reason shown to the user."""


class CorruptArchive(Exception):
    """The archive's bytes cannot be read; the message is the reason shown to the user."""


@contextmanager
def archive_errors(
    collector: PairCollector, kind: str, unreadable: tuple[type[Exception], ...]
) -> Iterator[None]:
    """Turn a limit crossed or unreadable bytes while reading a `kind` archive ("zip", "tar") into the
    fatal problem that says so; `unreadable` are the archive module's own errors."""
    unreadable_bytes: tuple[type[Exception], ...] = (*unreadable, *READ_ERRORS)
    try:
        yield
    except (LimitExceeded, CorruptArchive) as exc:
        collector.fatal(str(exc))
    except unreadable_bytes as exc:
        collector.fatal(f"not a readable {kind} archive: {exc}")


class ScratchWriteError(Exception):
    """Writing our own scratch copy failed (disk full, say): a fault of the server, not of the upload.

    Deliberately not an OSError, so the readers' handlers for corrupt archives never swallow it.
    """


class ByteBudget:
    """Counts bytes actually produced by a decompressor and stops the read once over the limit."""

    def __init__(self, limit: int, reason: str) -> None:
        self.limit = limit
        self.reason = reason
        self.used = 0

    def spend(self, count: int) -> None:
        """Add `count` bytes; raises `LimitExceeded` with the budget's reason once over the limit."""
        self.used += count
        if self.used > self.limit:
            raise LimitExceeded(self.reason)


class ExpansionBudget:
    """Decompressed bytes so far against compressed bytes read so far, across the whole archive.

    Judging members one by one lets any number of members just under the ratio floor through (the issue's
    bomb: 1,400 members of 4 MiB of zeros); judging the running totals refuses such an archive within the
    first few MiB past the floor. Since the compressed bytes read never exceed the archive's size, what an
    archive may expand to is also at most `max_ratio` times its size.
    """

    def __init__(self, *, max_bytes: int, max_ratio: float, bomb: str) -> None:
        self.max_bytes, self.max_ratio, self.bomb = max_bytes, max_ratio, bomb
        self.expanded = 0
        self.compressed = 0

    def read_compressed(self, count: int) -> None:
        """Count compressed bytes taken from the archive (a zip member's stored size, a gzip read)."""
        self.compressed += count

    def spend(self, count: int) -> None:
        """Add `count` decompressed bytes; `LimitExceeded` once the total or the running ratio is over."""
        self.expanded += count
        if self.expanded > self.max_bytes:
            raise LimitExceeded(f"archive expands to more than {self.max_bytes} bytes")
        if self.expanded > RATIO_FLOOR_BYTES and self.expanded > self.max_ratio * self.compressed:
            raise LimitExceeded(
                f"archive expands more than {self.max_ratio:g} times ({self.expanded} bytes from "
                f"{self.compressed} read; a {self.bomb} bomb?)"
            )


def normalise_name(name: str) -> str:
    """The lookup key of an archive path: "/" separators, no "./", NFC (macOS zips names in NFD)."""
    path = posixpath.normpath(name.replace("\\", "/"))
    return unicodedata.normalize("NFC", path.lstrip("/"))


def unsafe_name_reason(name: str) -> str | None:
    """Why a member name could escape the extraction directory, or None if it is safe."""
    path = name.replace("\\", "/")
    if "\x00" in path:
        return "has a NUL character in its name"
    if path.startswith("/") or _DRIVE.match(path):
        return "has an absolute path"
    if ".." in path.split("/"):
        return "has a '..' path component"
    if normalise_name(path) in ("", "."):
        return "has an empty name"
    return None


@dataclass
class MemberIndex:
    """An archive's regular files by normalised name (`names`), the few of them extracted to scratch
    (`files`: the manifest and the images its rows reference), and the names refused."""

    scratch: Path
    names: set[str] = field(default_factory=set)
    files: dict[str, Path] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)
    # Each named file's declared size, so that a layout can refuse a member before extracting it.
    sizes: dict[str, int] = field(default_factory=dict)
    # Scratch files ever stored: names them, so that one freed by `discard` is never reused for another.
    stored: int = 0

    def name_problem(self, name: str) -> str | None:
        """Why a member's name is refused (unsafe, or a second member of the same name), or None."""
        reason = unsafe_name_reason(name)
        if reason is None and normalise_name(name) in self.names:
            reason = "appears twice"
        return reason

    def accept(self, name: str, size: int) -> None:
        """Remember a regular file of the archive and its declared size (extracted only if a row
        references it)."""
        key = normalise_name(name)
        self.names.add(key)
        self.sizes[key] = size

    def refuse(self, name: str) -> None:
        """Remember a refused member, so a row pointing at it is told why it is missing."""
        self.refused.add(normalise_name(name))

    def store(self, name: str, source: Readable, *, declared: int, budget: ExpansionBudget | None) -> None:
        """Copy one member to scratch, counting its real bytes against its declared size and `budget`."""
        target = self.scratch / f"{self.stored:08d}"
        self.stored += 1
        written = 0
        with target.open("wb") as out:
            while chunk := _read_chunk(source, name):
                written += len(chunk)
                if written > declared:
                    raise LimitExceeded(f"archive member {name!r} is larger than declared ({declared} bytes)")
                if budget is not None:
                    budget.spend(len(chunk))
                _write_chunk(out, chunk)
        self.files[normalise_name(name)] = target

    def discard(self, name: str) -> None:
        """Delete a stored member's scratch copy once it has been read (a parquet shard: the next one
        then takes its place on disk rather than adding to it)."""
        stored = self.files.pop(normalise_name(name), None)
        if stored is not None:
            stored.unlink(missing_ok=True)


def _read_chunk(source: Readable, name: str) -> bytes:
    try:
        return source.read(CHUNK_BYTES)
    except READ_ERRORS as exc:
        raise CorruptArchive(f"archive member {name!r} is corrupt: {exc}") from exc


def _write_chunk(out: BinaryIO, chunk: bytes) -> None:
    try:
        out.write(chunk)
    except OSError as exc:
        raise ScratchWriteError(f"cannot write the upload's scratch copy: {exc}") from exc

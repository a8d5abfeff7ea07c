"""Extracting a .tar or .tar.gz upload in one streaming pass, counting every decompressed byte."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

from api.services.ingest.collector import PairCollector
from api.services.ingest.limits import RATIO_FLOOR_BYTES, IngestLimits
from api.services.ingest.members import (
    READ_ERRORS,
    ByteBudget,
    CorruptArchive,
    LimitExceeded,
    MemberIndex,
    Readable,
)


class _CountingStream(io.RawIOBase):
    """A read-only view of a stream that charges every byte it yields to a budget."""

    def __init__(self, inner: Readable, budget: ByteBudget) -> None:
        self._inner = inner
        self._budget = budget

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        self._budget.spend(len(data))
        buffer[: len(data)] = data
        return len(data)


def extract_tar(upload: Path, *, gzipped: bool, index: MemberIndex, collector: PairCollector) -> None:
    """Extract every acceptable regular file of a (gzipped) tar into `index`, reporting refused members."""
    limits = collector.limits
    declared = ByteBudget(
        limits.max_uncompressed_bytes,
        f"archive declares more than {limits.max_uncompressed_bytes} bytes",
    )
    with upload.open("rb") as raw:
        inner: Readable = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
        stream = io.BufferedReader(_CountingStream(inner, _stream_budget(upload, gzipped, limits)))
        try:
            # "r|" reads strictly forward: the tar is never decompressed twice and never seeked.
            with tarfile.open(fileobj=stream, mode="r|") as archive:
                for position, info in enumerate(archive):
                    if position >= limits.max_members:
                        collector.fatal(f"archive has more than {limits.max_members} entries")
                    _take(archive, info, index, collector, declared)
        except (LimitExceeded, CorruptArchive) as exc:
            collector.fatal(str(exc))
        except (tarfile.TarError, *READ_ERRORS) as exc:
            collector.fatal(f"not a readable tar archive: {exc}")


def _stream_budget(upload: Path, gzipped: bool, limits: IngestLimits) -> ByteBudget:
    """The most decompressed bytes the tar stream may yield: the size limit, or the ratio limit if lower."""
    if gzipped:
        by_ratio = max(RATIO_FLOOR_BYTES, int(upload.stat().st_size * limits.max_compression_ratio))
        if by_ratio < limits.max_uncompressed_bytes:
            return ByteBudget(
                by_ratio,
                f"archive expands more than {limits.max_compression_ratio:g} times (a gzip bomb?)",
            )
    return ByteBudget(
        limits.max_uncompressed_bytes,
        f"archive expands to more than {limits.max_uncompressed_bytes} bytes",
    )


def _take(
    archive: tarfile.TarFile,
    info: tarfile.TarInfo,
    index: MemberIndex,
    collector: PairCollector,
    declared: ByteBudget,
) -> None:
    reason = index.name_problem(info.name) or _type_problem(info)
    if reason is not None:
        index.refuse(info.name)
        collector.report(None, None, f"archive member {info.name!r} {reason}")
        return
    if info.isdir():
        return
    declared.spend(info.size)
    source = archive.extractfile(info)
    if source is None:
        raise CorruptArchive(f"archive member {info.name!r} has no data")
    # The stream's own budget already counts these bytes; only the declared size is checked here.
    index.store(info.name, source, declared=info.size, budget=None)


def _type_problem(info: tarfile.TarInfo) -> str | None:
    if info.issym():
        return "is a symbolic link"
    if info.islnk():
        return "is a hard link"
    if info.isdev():
        return "is a device or other special file"
    if info.issparse():
        return "is a sparse file"
    if not (info.isreg() or info.isdir()):
        return "is not a regular file or folder"
    return None

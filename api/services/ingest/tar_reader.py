"""Extracting a .tar or .tar.gz upload by streaming it twice, counting every decompressed byte.

A tar can only be read forward, and its manifest may come after the images, so the first pass names
every member and extracts only the manifest, and the second extracts the members the manifest's rows
reference (`references`). Nothing else reaches the disk; a gzip bomb is refused by the running ratio of
decompressed to compressed bytes within a few MiB past the floor. An archive of parquet shards is read in
one second pass too (`stream_tar_members`), each shard handed on as soon as its turn comes.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

from api.services.ingest.collector import PairCollector
from api.services.ingest.layouts import detect_layout
from api.services.ingest.members import (
    ByteBudget,
    CorruptArchive,
    ExpansionBudget,
    MemberIndex,
    Readable,
    archive_errors,
    normalise_name,
)
from api.services.ingest.pairs_file import is_manifest_candidate
from api.services.ingest.parquet_shards import ShardStream
from api.services.ingest.references import referenced_members

# What one pass does with each member that is a regular file, given the archive it is read from.
MemberAction = Callable[[tarfile.TarFile, tarfile.TarInfo], None]


class _CountingStream(io.RawIOBase):
    """A read-only view of a (decompressing) stream that charges every byte it yields to a budget, with
    the compressed bytes read from `raw` so far."""

    def __init__(self, inner: Readable, raw: BinaryIO, budget: ExpansionBudget) -> None:
        self._inner, self._raw, self._budget = inner, raw, budget
        self._raw_seen = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        position = self._raw.tell()
        self._budget.read_compressed(position - self._raw_seen)
        self._raw_seen = position
        self._budget.spend(len(data))
        buffer[: len(data)] = data
        return len(data)


def extract_tar(upload: Path, *, gzipped: bool, index: MemberIndex, collector: PairCollector) -> None:
    """Name every acceptable regular file of a (gzipped) tar in `index`, reporting refused members, and
    extract the manifest and the members its rows reference."""

    def name_member(archive: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        reason = index.name_problem(info.name) or _type_problem(info)
        if reason is not None:
            index.refuse(info.name)
            collector.report(None, None, f"archive member {info.name!r} {reason}")
        elif info.isreg():
            index.accept(info.name, info.size)
            if is_manifest_candidate(normalise_name(info.name)):
                _store(archive, info, index)

    _stream(upload, gzipped, collector, name_member)
    if detect_layout(index.names | index.refused, collector).name == "parquet_shards":
        return  # extracted one at a time as they are read (`stream_tar_members`)
    wanted = referenced_members(index, collector) - index.files.keys()

    def extract_wanted(archive: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        if info.isreg() and normalise_name(info.name) in wanted - index.files.keys():
            _store(archive, info, index)

    if wanted:
        _stream(upload, gzipped, collector, extract_wanted)


def stream_tar_members(
    upload: Path, *, gzipped: bool, names: list[str], index: MemberIndex, collector: PairCollector
) -> ShardStream:
    """Yield the accepted members `names` (normalised, as `extract_tar` named them in `index`) in that
    order, each with its scratch copy, in one forward pass; the caller reads and discards each one.

    A member is handed on as soon as it and all those before it in `names` are extracted: when the tar
    holds them in that order (tools that sort names, Hugging Face's shards), scratch holds one at a time;
    one met early waits in scratch for its turn rather than costing another pass over the archive.
    """
    pending, wanted = deque(names), set(names)
    with _tar_errors(collector):
        for archive, info in _members(upload, gzipped, collector):
            name = normalise_name(info.name)
            if info.isreg() and name in wanted:
                wanted.discard(name)  # a second member of that name was refused by `extract_tar`
                _store(archive, info, index)
            while pending and pending[0] in index.files:
                ready = pending.popleft()
                yield ready, index.files[ready]


def _stream(upload: Path, gzipped: bool, collector: PairCollector, action: MemberAction) -> None:
    """One forward pass over the tar, calling `action` for each member; stops the ingest on a limit."""
    with _tar_errors(collector):
        for archive, info in _members(upload, gzipped, collector):
            action(archive, info)


def _members(
    upload: Path, gzipped: bool, collector: PairCollector
) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """The tar's members in order, with the archive to read their data from, counting every byte
    decompressed and every size declared against the limits."""
    limits = collector.limits
    declared = ByteBudget(
        limits.max_uncompressed_bytes, f"archive declares more than {limits.max_uncompressed_bytes} bytes"
    )
    # A plain tar expands 1:1; only a gzip stream is judged by its ratio.
    ratio = limits.max_compression_ratio if gzipped else float("inf")
    budget = ExpansionBudget(max_bytes=limits.max_uncompressed_bytes, max_ratio=ratio, bomb="gzip")
    with upload.open("rb") as raw:
        inner: Readable = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
        stream = io.BufferedReader(_CountingStream(inner, raw, budget))
        # "r|" reads strictly forward and never seeks.
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for position, info in enumerate(archive):
                if position >= limits.max_members:
                    collector.fatal(f"archive has more than {limits.max_members} entries")
                if not info.isdir():
                    declared.spend(info.size)
                yield archive, info


def _tar_errors(collector: PairCollector) -> AbstractContextManager[None]:
    return archive_errors(collector, "tar", (tarfile.TarError,))


def _store(archive: tarfile.TarFile, info: tarfile.TarInfo, index: MemberIndex) -> None:
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

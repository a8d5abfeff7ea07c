"""Extracting a zip upload: sizes are checked from the central directory before any byte is inflated,
and only the manifest and the members its rows reference are inflated at all (parquet shards: one at a
time, as they are read)."""

from __future__ import annotations

import stat
import zipfile
from contextlib import AbstractContextManager
from pathlib import Path

from api.services.ingest.collector import PairCollector
from api.services.ingest.layouts import detect_layout
from api.services.ingest.limits import RATIO_FLOOR_BYTES
from api.services.ingest.members import (
    ExpansionBudget,
    MemberIndex,
    archive_errors,
    normalise_name,
)
from api.services.ingest.pairs_file import is_manifest_candidate
from api.services.ingest.parquet_shards import ShardStream
from api.services.ingest.references import referenced_members

_ENCRYPTED_FLAG = 0x1
_MACOS_METADATA = "__MACOSX/"  # resource forks that macOS's Finder adds; never data


def extract_zip(upload: Path, index: MemberIndex, collector: PairCollector) -> None:
    """Extract the manifest of a zip and the members its rows reference into `index`; every other
    acceptable regular file is only named there. Reports each refused member."""
    with _zip_errors(collector), zipfile.ZipFile(upload) as archive:
        members = archive.infolist()
        _check_declared_sizes(members, collector)
        accepted = {normalise_name(i.filename): i for i in members if _accept(i, index, collector)}
        budget = _budget(collector)
        for name in [name for name in accepted if is_manifest_candidate(name)]:
            _extract(archive, accepted[name], index, budget)
        if detect_layout(index.names | index.refused, collector).name == "parquet_shards":
            return  # extracted one at a time as they are read (`stream_zip_members`)
        for name in sorted(referenced_members(index, collector) - index.files.keys()):
            _extract(archive, accepted[name], index, budget)


def stream_zip_members(
    upload: Path, names: list[str], index: MemberIndex, collector: PairCollector
) -> ShardStream:
    """Extract the accepted members `names` (normalised, as `extract_zip` named them in `index`) one at a
    time, in that order, yielding each with its scratch copy; the caller reads and discards it before the
    next is extracted."""
    with _zip_errors(collector), zipfile.ZipFile(upload) as archive:
        first: dict[str, zipfile.ZipInfo] = {}
        for info in archive.infolist():
            # A second member of the same name was refused by `extract_zip`: the first one is the member.
            first.setdefault(normalise_name(info.filename), info)
        budget = _budget(collector)
        for name in names:
            _extract(archive, first[name], index, budget)
            yield name, index.files[name]


def _zip_errors(collector: PairCollector) -> AbstractContextManager[None]:
    return archive_errors(collector, "zip", (zipfile.BadZipFile,))


def _budget(collector: PairCollector) -> ExpansionBudget:
    limits = collector.limits
    return ExpansionBudget(
        max_bytes=limits.max_uncompressed_bytes, max_ratio=limits.max_compression_ratio, bomb="zip"
    )


def _extract(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, index: MemberIndex, budget: ExpansionBudget
) -> None:
    budget.read_compressed(info.compress_size)
    with archive.open(info) as source:
        index.store(info.filename, source, declared=info.file_size, budget=budget)


def _check_declared_sizes(members: list[zipfile.ZipInfo], collector: PairCollector) -> None:
    limits = collector.limits
    if len(members) > limits.max_members:
        collector.fatal(f"archive has {len(members)} entries, over the limit of {limits.max_members}")
    total = sum(info.file_size for info in members)
    if total > limits.max_uncompressed_bytes:
        collector.fatal(f"archive declares {total} bytes, over the limit of {limits.max_uncompressed_bytes}")
    for info in members:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR_BYTES and ratio > limits.max_compression_ratio:
            collector.fatal(
                f"archive member {info.filename!r} expands {ratio:.0f} times, over the limit of "
                f"{limits.max_compression_ratio:g} (a zip bomb?)"
            )
    # The whole archive is judged as well as each member: many members each under the floor add up.
    packed = max(sum(info.compress_size for info in members), 1)
    if total > RATIO_FLOOR_BYTES and total / packed > limits.max_compression_ratio:
        collector.fatal(
            f"archive expands {total / packed:.0f} times ({total} bytes declared in {packed} compressed), "
            f"over the limit of {limits.max_compression_ratio:g} (a zip bomb?)"
        )


def _accept(info: zipfile.ZipInfo, index: MemberIndex, collector: PairCollector) -> bool:
    """Whether a member is a safe, unencrypted regular file (named in `index`). Reports why one is refused."""
    if info.filename.startswith(_MACOS_METADATA):
        return False
    reason = index.name_problem(info.filename) or _type_problem(info)
    if reason is not None:
        index.refuse(info.filename)
        collector.report(None, None, f"archive member {info.filename!r} {reason}")
        return False
    if info.is_dir():
        return False
    index.accept(info.filename, info.file_size)
    return True


def _type_problem(info: zipfile.ZipInfo) -> str | None:
    # Unix zip tools keep st_mode in the high 16 bits of external_attr; 0 means "not recorded".
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        return "is a symbolic link"
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "is a device or other special file"
    if info.flag_bits & _ENCRYPTED_FLAG:
        return "is encrypted"
    return None

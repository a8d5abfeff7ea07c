"""Extracting a zip upload: sizes are checked from the central directory before any byte is inflated."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

from api.services.ingest.collector import PairCollector
from api.services.ingest.limits import RATIO_FLOOR_BYTES
from api.services.ingest.members import READ_ERRORS, ByteBudget, CorruptArchive, LimitExceeded, MemberIndex

_ENCRYPTED_FLAG = 0x1
_MACOS_METADATA = "__MACOSX/"  # resource forks that macOS's Finder adds; never data


def extract_zip(upload: Path, index: MemberIndex, collector: PairCollector) -> None:
    """Extract every acceptable regular file of a zip into `index`, reporting each refused member."""
    limits = collector.limits
    try:
        with zipfile.ZipFile(upload) as archive:
            members = archive.infolist()
            _check_declared_sizes(members, collector)
            budget = ByteBudget(
                limits.max_uncompressed_bytes,
                f"archive expands to more than {limits.max_uncompressed_bytes} bytes",
            )
            for info in members:
                if _accept(info, index, collector):
                    with archive.open(info) as source:
                        index.store(info.filename, source, declared=info.file_size, budget=budget)
    except (LimitExceeded, CorruptArchive) as exc:
        collector.fatal(str(exc))
    except (zipfile.BadZipFile, *READ_ERRORS) as exc:
        collector.fatal(f"not a readable zip archive: {exc}")


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


def _accept(info: zipfile.ZipInfo, index: MemberIndex, collector: PairCollector) -> bool:
    """Whether to extract a member: a safe, unencrypted regular file. Reports why a member is refused."""
    if info.filename.startswith(_MACOS_METADATA):
        return False
    reason = index.name_problem(info.filename) or _type_problem(info)
    if reason is not None:
        index.refuse(info.filename)
        collector.report(None, None, f"archive member {info.filename!r} {reason}")
        return False
    return not info.is_dir()


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

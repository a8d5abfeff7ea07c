"""`ingest_upload`: an uploaded file in, a dataset in the canonical layout out, or every problem found.

Everything is built in a hidden staging folder beside `dest_dir` and renamed into place only when the
whole upload has passed, so `dest_dir` is either complete (manifest written last) or absent.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path

from api.services.ingest.archive_pairs import ingest_archive_rows
from api.services.ingest.captions import ingest_captions
from api.services.ingest.collector import PairCollector, StopIngest
from api.services.ingest.layouts import detect_layout, parquet_shard_names
from api.services.ingest.limits import IngestLimits
from api.services.ingest.members import MemberIndex
from api.services.ingest.pair_folders import ingest_pair_folders
from api.services.ingest.parquet_reader import ingest_parquet
from api.services.ingest.parquet_shards import ShardStream, ingest_parquet_shards
from api.services.ingest.report import IngestRejected, IngestReport, Problem, SourceFormat
from api.services.ingest.sniff import UploadKind, sniff_kind
from api.services.ingest.tar_reader import extract_tar, stream_tar_members
from api.services.ingest.target_rows import ingest_archive_targets, ingest_parquet_targets
from api.services.ingest.zip_reader import extract_zip, stream_zip_members
from trainer.dataset_format import DatasetKind, DatasetWriter

STAGING_MARKER = ".ingest-"  # staging folders are named ".<dest name>.ingest-<random>"; safe to sweep


def staging_dirs(dest_dir: Path) -> list[Path]:
    """The staging folders an ingest into `dest_dir` may have left behind if its process died."""
    return sorted(dest_dir.parent.glob(f".{dest_dir.name}{STAGING_MARKER}*"))


def ingest_upload(
    upload_path: Path,
    filename: str,
    dest_dir: Path,
    *,
    limits: IngestLimits | None = None,
    kind: DatasetKind = "pairs",
    trigger_word: str | None = None,
) -> IngestReport:
    """Check an uploaded dataset and write it to `dest_dir` in the canonical layout.

    Args:
        upload_path: the upload as received, already on disk; only read, in chunks.
        filename: the client's file name, used in messages only (the format is read from the content).
        dest_dir: where the dataset goes; it must not exist or be an empty folder.
        limits: size and count limits; the defaults if None.
        kind: "pairs" (prompt, chosen, rejected), or "targets" / "avoid" (prompt, image, and the
            generation_prompt the base model draws the other side from at job start). Archives without
            a manifest are read by their layout (`layouts`): w/ and l/ pair folders, captioned images, or
            parquet shards (`parquet_shards`).
        trigger_word: put into every caption of a captioned-images upload (`trigger`); refused with any
            other layout and with parquet.
    Raises:
        IngestRejected: with every problem found; `dest_dir` is then absent.
        FileExistsError: `dest_dir` holds files already.
    """
    limits = limits or IngestLimits()
    upload_kind = sniff_kind(upload_path)
    if upload_kind is None:
        problem = f"{filename!r} is not a zip, tar, tar.gz or parquet file (checked by content, not name)"
        raise IngestRejected([Problem(row=None, field=None, reason=problem)])
    _release_dest(dest_dir)
    staging = dest_dir.parent / f".{dest_dir.name}{STAGING_MARKER}{secrets.token_hex(8)}"
    (staging / "members").mkdir(parents=True)
    try:
        report = _ingest(upload_path, upload_kind, staging, limits, kind, trigger_word)
        os.rename(staging / "dataset", dest_dir)
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _release_dest(dest_dir: Path) -> None:
    """Make sure the final rename can happen: an existing empty `dest_dir` is removed now."""
    if dest_dir.is_dir() and not any(dest_dir.iterdir()):
        dest_dir.rmdir()
    elif dest_dir.exists():
        raise FileExistsError(f"{dest_dir} already exists and is not empty")


def _ingest(
    upload_path: Path,
    kind: UploadKind,
    staging: Path,
    limits: IngestLimits,
    dataset_kind: DatasetKind,
    trigger_word: str | None,
) -> IngestReport:
    # Leaving the `with` by an exception closes the rows file without writing the manifest.
    with DatasetWriter(staging / "dataset", kind=dataset_kind) as writer:
        collector = PairCollector(writer, limits)
        # A StopIngest's reason is already among the collector's problems.
        with contextlib.suppress(StopIngest):
            _read(upload_path, kind, MemberIndex(staging / "members"), collector, trigger_word)
        report = collector.finish(_SOURCE_FORMAT[kind])
        writer.captions_missing = report.captions_missing
    return report


def _read(
    upload_path: Path,
    kind: UploadKind,
    index: MemberIndex,
    collector: PairCollector,
    trigger_word: str | None,
) -> None:
    pairs = collector.kind == "pairs"
    if kind == "parquet":
        _refuse_trigger_word(trigger_word, "a parquet upload", collector)
        (ingest_parquet if pairs else ingest_parquet_targets)(upload_path, collector)
        return
    if kind == "zip":
        extract_zip(upload_path, index, collector)
    else:
        extract_tar(upload_path, gzipped=kind == "tar.gz", index=index, collector=collector)
    layout = detect_layout(index.names | index.refused, collector)
    if layout.name == "captions":
        ingest_captions(index, collector, trigger_word)
        return
    _refuse_trigger_word(trigger_word, f"a {layout.name.replace('_', ' ')} upload", collector)
    if layout.name == "parquet_shards":
        with contextlib.closing(_shard_stream(upload_path, kind, index, collector)) as shards:
            ingest_parquet_shards(shards, index, collector)
    elif layout.name == "pair_folders":
        ingest_pair_folders(index, collector, layout.base)
    else:
        (ingest_archive_rows if pairs else ingest_archive_targets)(index, collector)


def _shard_stream(
    upload_path: Path, kind: UploadKind, index: MemberIndex, collector: PairCollector
) -> ShardStream:
    """The archive's parquet shards, extracted one at a time in name order."""
    names = parquet_shard_names(index.names)
    if kind == "zip":
        return stream_zip_members(upload_path, names, index, collector)
    return stream_tar_members(
        upload_path, gzipped=kind == "tar.gz", names=names, index=index, collector=collector
    )


def _refuse_trigger_word(trigger_word: str | None, upload: str, collector: PairCollector) -> None:
    """A trigger word only goes into captions; silently dropping it would train something else."""
    if trigger_word is not None:
        collector.report(
            None, "trigger_word", f"applies to images with .txt captions (kind targets), not to {upload}"
        )


_SOURCE_FORMAT: dict[UploadKind, SourceFormat] = {
    "zip": "zip",
    "tar": "tar",
    "tar.gz": "tar",
    "parquet": "parquet",
}

"""Finding and reading the pairs manifest of an archive: pairs.jsonl or pairs.csv, row by row."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from api.services.ingest.collector import PairCollector, StopIngest
from api.services.ingest.limits import MAX_LINE_BYTES

PAIR_FIELDS = ("prompt", "chosen", "rejected")
MANIFEST_NAMES = ("pairs.jsonl", "pairs.csv")
# Read before the images too: the captions of a pair-folders upload (api.services.ingest.pair_folders).
_FIRST_PASS_NAMES = (*MANIFEST_NAMES, "captions.jsonl")

Record = dict[str, object]


def is_manifest_candidate(name: str) -> bool:
    """Whether the member `name` (normalised) may be the manifest (or a captions.jsonl), extracted before
    any image: at the root or one folder down."""
    return name.count("/") <= 1 and name.rsplit("/", 1)[-1] in _FIRST_PASS_NAMES


def locate_pairs_file(names: Iterable[str], collector: PairCollector) -> tuple[str, str]:
    """The manifest's member name and the folder its image paths are relative to ("" or "top/").

    The manifest sits at the archive's root, or inside its single top-level folder (as zipping a
    folder produces). Stops the ingest if there is none, or both a .jsonl and a .csv.
    """
    present = set(names)
    bases = [""]
    tops = {name.split("/", 1)[0] for name in present}
    if len(tops) == 1 and all("/" in name for name in present):
        bases.append(f"{tops.pop()}/")
    for base in bases:
        found = [base + manifest for manifest in MANIFEST_NAMES if base + manifest in present]
        if len(found) > 1:
            collector.fatal(f"archive has both {found[0]!r} and {found[1]!r}; keep one")
        if found:
            return found[0], base
    collector.fatal("archive has no pairs.jsonl or pairs.csv at its root or in its single top-level folder")


def read_records(
    path: Path, name: str, collector: PairCollector, fields: tuple[str, ...]
) -> Iterator[tuple[int, Record]]:
    """Yield (row, record) for each non-blank data row of the manifest `name` stored at `path`; a CSV
    must have every column of `fields`."""
    if name.endswith(".csv"):
        yield from _csv_records(path, collector, fields)
    else:
        yield from _jsonl_records(path, collector)


def _jsonl_records(path: Path, collector: PairCollector) -> Iterator[tuple[int, Record]]:
    row = 0
    with path.open("rb") as lines:
        for line in _bounded_lines(lines, collector):
            if not line.strip():
                continue
            try:
                record = json.loads(line.removeprefix(b"\xef\xbb\xbf"))
            except (ValueError, RecursionError) as exc:
                # RecursionError: a line of a few thousand "[" is valid JSON that nests too deep.
                collector.report(row, None, f"not valid JSON: {exc}")
                record = None
            if record is not None and not isinstance(record, dict):
                collector.report(row, None, "not a JSON object")
            elif record is not None and collector.check_text(row, record):
                yield row, record
            row += 1


def _csv_records(
    path: Path, collector: PairCollector, fields: tuple[str, ...]
) -> Iterator[tuple[int, Record]]:
    with path.open("rb") as raw:
        text = (line.decode("utf-8-sig") for line in _bounded_lines(raw, collector))
        try:
            reader = csv.DictReader(text)
            missing = [field for field in fields if field not in (reader.fieldnames or [])]
            for field in missing:
                collector.report(None, field, "missing column in pairs.csv")
            if missing:
                raise StopIngest("pairs.csv lacks columns")
            for row, values in enumerate(reader):
                yield row, {key: value for key, value in values.items() if key is not None}
        except (csv.Error, UnicodeDecodeError) as exc:
            collector.fatal(f"pairs.csv is not valid UTF-8 CSV: {exc}")


def _bounded_lines(lines: BinaryIO, collector: PairCollector) -> Iterator[bytes]:
    """Lines of at most MAX_LINE_BYTES, so that one endless line cannot fill memory."""
    while line := lines.readline(MAX_LINE_BYTES + 1):
        if len(line) > MAX_LINE_BYTES:
            collector.fatal(f"a line of the pairs file is longer than {MAX_LINE_BYTES} bytes")
        yield line

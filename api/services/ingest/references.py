"""Which archive members the manifest's rows reference: the only ones worth extracting.

An archive may hold anything besides its pairs; extracting what no row names would let a small upload
fill the scratch disk (the issue's bomb: 1,400 members of zeros and a 2-pair manifest). So the manifest is
extracted first, its rows are read once without reporting (the reporting pass comes after extraction), and
only the members they name are extracted.
"""

from __future__ import annotations

import posixpath

from api.services.ingest.captions import caption_members
from api.services.ingest.collector import PairCollector, StopIngest
from api.services.ingest.layouts import detect_layout
from api.services.ingest.masks import MASK_FIELD
from api.services.ingest.members import MemberIndex, normalise_name, unsafe_name_reason
from api.services.ingest.pair_folders import pair_folder_members
from api.services.ingest.pairs_file import locate_pairs_file, read_records

# The row fields that hold image paths, by dataset kind.
IMAGE_FIELDS = {"pairs": ("chosen", "rejected"), "targets": ("image",), "avoid": ("image",)}


def referenced_members(index: MemberIndex, collector: PairCollector) -> set[str]:
    """The accepted member names (normalised) that rows of the extracted manifest reference, or that the
    archive's layout (`layouts`) reads when it has no manifest: images and their caption files.

    Stops the ingest (as the reporting pass would) if the archive has no layout at all; any other problem
    of the rows is left to the reporting pass, which reads them again.
    """
    layout = detect_layout(index.names | index.refused, collector)
    if layout.name == "parquet_shards":
        return set()  # the shards are extracted one at a time as they are read, not beforehand
    if layout.name == "captions":
        return caption_members(index) - index.refused
    if layout.name == "pair_folders":
        return pair_folder_members(index, layout.base) - index.refused
    manifest, base = locate_pairs_file(index.names, collector)
    fields = IMAGE_FIELDS[collector.kind]
    wanted: set[str] = set()
    quiet = collector.quiet_twin()
    try:
        for count, (_, record) in enumerate(read_records(index.files[manifest], manifest, quiet, fields)):
            if count >= collector.limits.max_pairs:
                break
            wanted.update(_member(base, record.get(field)) for field in (*fields, MASK_FIELD))
    except StopIngest:
        pass  # the reporting pass meets the same fatal problem and reports it
    return (wanted & index.names) - index.refused


def _member(base: str, path: object) -> str:
    if not isinstance(path, str) or unsafe_name_reason(path) is not None:
        return ""
    return normalise_name(posixpath.join(base, path))

"""Reading an archive of Pick-a-Pic style parquet shards (Hugging Face's data/train-00000-of-00004.parquet,
...) one shard at a time, into the dataset that one parquet file of the same rows would give.

The archive reader (`zip_reader.stream_zip_members`, `tar_reader.stream_tar_members`) extracts the shards
to scratch in name order; each is read by the single-parquet reader (`parquet_reader`, `target_rows`: the
same columns, BATCH_ROWS rows at a time) and deleted before the next one is read, so memory stays that of
one batch and scratch disk about that of one shard, whatever the number of shards.

Rows are numbered across the shards in name order, so row N of a problem is row N of the whole upload;
each problem's reason also names its shard and the row's place in it. One byte limit,
`max_uncompressed_bytes`, covers the parquet data of all the shards together, twice: what their footers
declare is added up before each shard is read, and what they decode to is counted as it is read.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from api.services.ingest.collector import PairCollector
from api.services.ingest.members import ByteBudget, MemberIndex
from api.services.ingest.parquet_reader import ingest_parquet
from api.services.ingest.report import Problem
from api.services.ingest.target_rows import ingest_parquet_targets
from trainer.dataset_format import EncodedImage

# Each shard by its (normalised) member name and its scratch copy, in the order the rows are numbered.
ShardStream = Generator[tuple[str, Path], None, None]


def ingest_parquet_shards(shards: ShardStream, index: MemberIndex, collector: PairCollector) -> None:
    """Check every row of every shard, in order, and hand the valid ones to `collector`; each shard's
    scratch copy is deleted from `index` once read (or refused)."""
    read = ingest_parquet if collector.kind == "pairs" else ingest_parquet_targets
    limit = collector.limits.max_uncompressed_bytes
    first_row = declared_before = 0
    # What the shards decode to, all of them together: a shard whose footer understates its data (the
    # dictionary encoding of a repeated value does) cannot then bring more than the limit once per shard.
    decoded = ByteBudget(limit, f"parquet shards expand to more than {limit} bytes together")
    for name, path in shards:
        try:
            rows, declared = _declared(name, path, collector)
            if (total := declared_before + declared) > limit:
                collector.fatal(
                    f"parquet shard {name!r} brings the bytes the shards declare to {total}, over the limit "
                    f"of {limit}"
                )
            shard = ShardCollector(
                collector, shard=name, first_row=first_row, max_bytes=limit - declared_before
            )
            read(path, shard, first_row=first_row, budget=decoded)
        finally:
            index.discard(name)
        first_row += rows
        declared_before += declared


def _declared(name: str, path: Path, collector: PairCollector) -> tuple[int, int]:
    """A shard's row count and the bytes its row groups declare, from its footer alone."""
    try:
        metadata = pq.read_metadata(path)
    except (pa.ArrowException, OSError) as exc:
        collector.fatal(f"archive member {name!r} is not a readable parquet file: {exc}")
    declared = sum(int(metadata.row_group(i).total_byte_size) for i in range(metadata.num_row_groups))
    return int(metadata.num_rows), declared


class ShardCollector(PairCollector):
    """The upload's collector as the reader of one shard sees it: each problem's reason names the shard and
    the row's place in it, and the byte limit is what the shards before it left of the budget. The pairs,
    the counts and the problems themselves are all the upload's collector's.

    `problems` holds only this shard's (a few, enough to tell whether there are any): the reader checks it
    after the shard's columns, and problems of earlier shards' rows must not stop this one from being read.
    """

    # Deliberately not PairCollector.__init__: the writer and every count stay with `upload`.
    def __init__(self, upload: PairCollector, *, shard: str, first_row: int, max_bytes: int) -> None:
        self._upload, self._shard, self._first_row = upload, shard, first_row
        self.kind = upload.kind
        self.limits = upload.limits.model_copy(update={"max_uncompressed_bytes": max(max_bytes, 1)})
        self.problems: list[Problem] = []

    def report(self, row: int | None, field: str | None, reason: str) -> None:
        where = f"shard {self._shard!r}" + ("" if row is None else f", its row {row - self._first_row}")
        if len(self.problems) < self.limits.max_problems:
            self.problems.append(Problem(row=row, field=field, reason=reason))
        self._upload.report(row, field, f"{reason} ({where})")

    def admit_row(self, row: int) -> None:
        self._upload.admit_row(row)

    def drop_tie(self) -> None:
        self._upload.drop_tie()

    def add_pair(
        self, prompt: str, *, chosen: EncodedImage, rejected: EncodedImage, mask: EncodedImage | None = None
    ) -> None:
        self._upload.add_pair(prompt, chosen=chosen, rejected=rejected, mask=mask)

    def add_target(
        self,
        prompt: str,
        *,
        image: EncodedImage,
        generation_prompt: str | None,
        mask: EncodedImage | None = None,
    ) -> None:
        self._upload.add_target(prompt, image=image, generation_prompt=generation_prompt, mask=mask)

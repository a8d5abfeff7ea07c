"""What an ingest returns: a report on success, or every problem found on rejection."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from trainer.dataset_format import DatasetKind

SourceFormat = Literal["zip", "tar", "parquet"]


class Problem(BaseModel):
    """One thing wrong with an upload.

    `row` is the 0-based data row (of pairs.jsonl / pairs.csv, blank lines and the CSV header not
    counted; of the parquet file; of an archive of parquet shards, counted across the shards in name
    order, the reason naming the shard; of pair folders and captioned images, in name order); None for
    the upload as a whole. `field` names the column or key.
    """

    model_config = ConfigDict(frozen=True)

    row: int | None
    field: str | None
    reason: str


class PreviewPair(BaseModel):
    """A pair shown in the dataset preview; its images are pair `n` of the stored dataset."""

    model_config = ConfigDict(frozen=True)

    prompt: str
    masked: bool = False  # whether the pair has a preference mask


class IngestReport(BaseModel):
    """Summary of a dataset written in the canonical layout."""

    model_config = ConfigDict(frozen=True)

    kind: DatasetKind
    num_pairs: int
    dropped_ties: int
    preview: list[PreviewPair]
    source_format: SourceFormat
    # Rows of a captions upload whose image had no caption (trained on the trigger word alone).
    captions_missing: int | None = None


class IngestRejected(Exception):
    """The upload was refused; `problems` lists everything found, in the order it was found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        shown = "; ".join(_describe(p) for p in problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        super().__init__(f"upload rejected: {shown}{more}")


def _describe(problem: Problem) -> str:
    where = [f"row {problem.row}"] if problem.row is not None else []
    where += [f"field {problem.field}"] if problem.field is not None else []
    return f"{', '.join(where)}: {problem.reason}" if where else problem.reason

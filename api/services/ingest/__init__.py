"""Dataset upload ingest: zip / tar(.gz) archives with pairs.jsonl or pairs.csv, or Pick-a-Pic parquet;
for targets and avoid datasets, rows of one image each (`target_rows`).

Torch-free. Streams the upload, checks everything, reports every problem with its row and field, and
writes the trainer's canonical layout (`trainer.dataset_format`) only when the whole upload is valid.
"""

from api.services.ingest.limits import IngestLimits
from api.services.ingest.report import IngestRejected, IngestReport, PreviewPair, Problem, SourceFormat
from api.services.ingest.service import ingest_upload

__all__ = [
    "IngestLimits",
    "IngestRejected",
    "IngestReport",
    "PreviewPair",
    "Problem",
    "SourceFormat",
    "ingest_upload",
]

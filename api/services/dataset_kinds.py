"""The kind of datasets recorded before it was a column (migration 0006), read once from their manifests
when the API starts, so that reads and listings never open a manifest in storage.

Batch by batch, each in short transactions of its own: the rows are read, then their manifests outside any
transaction, then the kinds written. A dataset whose manifest cannot be read keeps a NULL kind (the API
answers `kind: null` for it, as it did before when its files could not be read) and is tried again at the
next start."""

from __future__ import annotations

import logging
from typing import NamedTuple

from sqlalchemy.exc import SQLAlchemyError

from api.deps import AppContext
from api.services.dataset_files import read_stored_manifest
from core.db import Database
from core.repositories import datasets as dataset_repo
from core.storage import Storage
from trainer.dataset_format import DatasetFormatError, DatasetKind

log = logging.getLogger(__name__)

BATCH_SIZE = 100


class BackfillReport(NamedTuple):
    """Ids of the datasets whose kind was recorded, and of those whose manifest could not be read."""

    recorded: list[str]
    unreadable: list[str]


def backfill_at_start(context: AppContext) -> None:
    """The start-up hook: the API starts even when this cannot finish (the next start goes on from there)."""
    try:
        backfill_dataset_kinds(context.database, context.storage)
    except SQLAlchemyError as exc:
        log.warning("not recording dataset kinds: the database is unreachable (%s)", type(exc).__name__)
    except Exception as exc:  # the store's own errors (boto3's): unreachable, access denied
        log.warning("not recording all dataset kinds: %s: %s", type(exc).__name__, exc)


def backfill_dataset_kinds(
    database: Database, storage: Storage, *, batch_size: int = BATCH_SIZE
) -> BackfillReport:
    """Record the kind of every dataset that has none, from its manifest; logs what it did, if anything."""
    report = BackfillReport(recorded=[], unreadable=[])
    after: str | None = None
    while True:
        with database.sessions() as session:
            batch = dataset_repo.datasets_without_kind(session, after=after, limit=batch_size)
        kinds = {dataset_id: _manifest_kind(storage, key) for dataset_id, key in batch}
        with database.session_scope() as session:
            for dataset_id, kind in kinds.items():
                if kind is not None:
                    dataset_repo.record_kind(session, dataset_id, kind)
        report.recorded.extend(i for i, kind in kinds.items() if kind is not None)
        report.unreadable.extend(i for i, kind in kinds.items() if kind is None)
        if len(batch) < batch_size:
            break
        after = batch[-1][0]
    _log(report)
    return report


def _manifest_kind(storage: Storage, key: str) -> DatasetKind | None:
    try:
        return read_stored_manifest(storage, key).kind
    except DatasetFormatError as exc:
        log.warning("dataset at %s keeps no kind: %s", key, exc)
        return None


def _log(report: BackfillReport) -> None:
    if not report.recorded and not report.unreadable:
        return
    log.info(
        "recorded the kind of %d datasets from their manifests; %d unreadable, their kind stays null: %s",
        len(report.recorded),
        len(report.unreadable),
        ", ".join(report.unreadable) or "none",
    )

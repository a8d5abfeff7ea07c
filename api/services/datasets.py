"""Datasets: receive an upload (written once, into the data directory), ingest it into the canonical
layout, store it, record it.

With a local storage directory the ingest writes straight into its final folder (renamed into place); with
an object store it writes a staging folder under tmp_dir that is then uploaded, manifest last, so a reader
that finds the manifest finds every file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError, field_validator
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from api.deps import AppContext
from api.errors import Conflict, DatasetRejected, NotFound
from api.monitoring import record_upload
from api.schemas import DatasetOut, ListResponse, PreviewPairOut
from api.services.dataset_files import image_key, iter_uploaded_pairs, read_stored_manifest
from api.services.downloads import IMAGE_MEDIA_TYPES, FileDownload, stored_download
from api.services.inflight import InflightUpload, sweep_abandoned_uploads
from api.services.ingest import IngestLimits, IngestRejected, IngestReport, ingest_upload
from api.services.upload_form import MAX_NAME_CHARS, MAX_TRIGGER_CHARS, ReceivedForm, receive_form
from api.services.uploads import UploadStore
from core.db import after_commit, after_rollback
from core.models import Dataset, Tenant, new_id
from core.repositories import datasets as dataset_repo
from core.storage import INCOMPLETE_UPLOAD_MAX_AGE, StorageDeleteError, dataset_key
from trainer.dataset_format import MANIFEST_FILE, DatasetFormatError, DatasetKind, StoredPair

log = logging.getLogger(__name__)


def sweep_abandoned(context: AppContext) -> list[str]:
    """Clean up after uploads whose API process died (run at start); a dataset that was recorded keeps
    its files. Skipped, with a warning, while the database is unreachable. Object-store uploads left
    unfinished for a day (by any process) are aborted."""

    def recorded(dataset_id: str) -> bool:
        with context.database.sessions() as session:
            return session.get(Dataset, dataset_id) is not None

    _abort_incomplete_uploads(context)
    try:
        return sweep_abandoned_uploads(context.settings.tmp_dir, context.storage, recorded)
    except SQLAlchemyError as exc:
        log.warning("not sweeping abandoned uploads: the database is unreachable (%s)", type(exc).__name__)
        return []
    except StorageDeleteError as exc:
        log.warning("not sweeping all abandoned uploads: %s", exc)  # the next start tries again
        return []


def _abort_incomplete_uploads(context: AppContext) -> None:
    """Abort object-store uploads that a dead process began (the README's lifecycle rule does the same)."""
    try:
        context.storage.abort_incomplete_uploads(older_than=INCOMPLETE_UPLOAD_MAX_AGE)
    except Exception as exc:  # boto3's errors: the store may deny listing uploads; start all the same
        log.warning("not aborting incomplete uploads: %s: %s", type(exc).__name__, exc)


async def upload_dataset(
    session: Session,
    context: AppContext,
    tenant: Tenant,
    *,
    body: AsyncIterable[bytes],
    content_type: str,
    declared_bytes: int = 0,
    idempotency_key: str | None = None,
) -> DatasetOut:
    """Receive a multipart upload (`file`, optional `name`, `kind` and `trigger_word`) and validate and
    store its dataset; 422 with every problem if it is refused. An Idempotency-Key seen before returns that
    dataset for the same file, name, kind and trigger word (409 otherwise). 507 before a byte is read if
    the `declared_bytes` (Content-Length) do not fit beside what open resumable uploads were promised.
    The body is read on the event loop; the blocking work (writing, checking, storing) runs in worker
    threads."""
    await run_in_threadpool(UploadStore(context.settings).check_room, declared_bytes)
    pending = await run_in_threadpool(_PendingDataset, session, context, tenant)
    async with receive_form(
        body,
        content_type,
        folder=pending.marker.folder,
        prefix=pending.marker.scratch_prefix,
        max_bytes=context.settings.max_upload_bytes,
    ) as upload:
        record_upload(upload.bytes)
        return await run_in_threadpool(pending.store, upload, idempotency_key)


def dataset_from_file(
    session: Session,
    context: AppContext,
    tenant: Tenant,
    *,
    source: Path,
    filename: str,
    fields: dict[str, Any],
    idempotency_key: str | None = None,
) -> DatasetOut:
    """Validate and store a complete file already on this host's disk (a finished resumable upload)
    as `upload_dataset` does a received form; the file itself is only read."""
    pending = _PendingDataset(session, context, tenant)
    size, sha256 = _size_and_sha256(source)
    text = {name: str(value) for name, value in fields.items() if value is not None}
    upload = ReceivedForm(source, size, sha256, filename, text)
    return pending.store(upload, idempotency_key)


class _PendingDataset:
    """A new dataset's id, storage key and in-flight marker, and the hooks that clean both up if the
    request's transaction does not commit."""

    def __init__(self, session: Session, context: AppContext, tenant: Tenant) -> None:
        self.session, self.context, self.tenant = session, context, tenant
        self.dataset_id = new_id("ds")
        self.key = dataset_key(tenant.id, self.dataset_id)
        # Until this transaction ends, a marker says the upload is in flight; if the process dies, the
        # next start sweeps what it left (api/services/inflight.py), the received file included.
        self.marker = InflightUpload(context.settings.tmp_dir, self.dataset_id, self.key)
        after_commit(session, self.marker.release)
        # If the request's transaction does not commit, the stored files must not outlive it.
        after_rollback(session, lambda: context.storage.delete_tree(self.key))
        after_rollback(session, self.marker.release)

    def store(self, upload: ReceivedForm, idempotency_key: str | None) -> DatasetOut:
        """Check and store `upload` (replaying the dataset an Idempotency-Key names, if any)."""
        session, tenant = self.session, self.tenant
        fields = upload_fields(upload)
        request_hash = _request_hash(upload.sha256, fields)
        if idempotency_key is not None:
            seen = dataset_repo.get_dataset_by_idempotency_key(
                session, tenant_id=tenant.id, key=idempotency_key
            )
            if seen is not None:
                return _replayed(seen, request_hash)
        report = _ingest_and_store(self.context, upload.path, fields, self.key, self.marker)
        row = _Row(self.dataset_id, self.key, upload, fields, report, idempotency_key, request_hash)
        return _record(session, self.context, tenant, row)


@dataclass(frozen=True)
class _Row:
    """What a dataset's row is made of."""

    dataset_id: str
    key: str
    upload: ReceivedForm
    fields: UploadFields
    report: IngestReport
    idempotency_key: str | None
    request_hash: str


def _record(session: Session, context: AppContext, tenant: Tenant, row: _Row) -> DatasetOut:
    """Add the dataset's row; if a concurrent upload with the same Idempotency-Key won, answer with its
    dataset and delete our files."""
    upload, fields, report, key = row.upload, row.fields, row.report, row.key
    idempotency_key, request_hash = row.idempotency_key, row.request_hash
    try:
        with session.begin_nested():
            dataset = dataset_repo.add_dataset(
                session,
                dataset_id=row.dataset_id,
                tenant_id=tenant.id,
                name=fields.name or fields.filename,
                kind=report.kind,
                storage_key=key,
                num_pairs=report.num_pairs,
                size_bytes=upload.bytes,
                sha256=upload.sha256,
                preview=[p.model_dump() for p in report.preview],
                idempotency_key=idempotency_key,
                request_hash=request_hash,
                captions_missing=report.captions_missing,
            )
    except IntegrityError:
        # A concurrent upload with the same Idempotency-Key was recorded first: ours is not needed.
        winner = dataset_repo.get_dataset_by_idempotency_key(
            session, tenant_id=tenant.id, key=idempotency_key or ""
        )
        if winner is None:
            raise
        # The refused objects are logged and counted by the store; the answer is the winner's all the same.
        with contextlib.suppress(StorageDeleteError):
            context.storage.delete_tree(key)
        return _replayed(winner, request_hash)
    return dataset_out(dataset)


def _size_and_sha256(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


class UploadFields(BaseModel):
    """The form's text fields, checked as OpenAPI states them; the file name (the default display name)
    keeps the name's bound by its last characters."""

    filename: str
    name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    kind: DatasetKind = "pairs"
    trigger_word: str | None = Field(default=None, min_length=1, max_length=MAX_TRIGGER_CHARS)

    @field_validator("trigger_word", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        """A blank trigger word (an empty form field) means none; spaces around one are not part of it."""
        if isinstance(value, str):
            return value.strip() or None
        return value


def upload_fields(upload: ReceivedForm) -> UploadFields:
    """The checked text fields of a received form; 422 naming the field otherwise."""
    try:
        return UploadFields(filename=(upload.filename or "upload")[-MAX_NAME_CHARS:], **upload.fields)
    except ValidationError as exc:
        # The same answer FastAPI gives for a form field it checks itself.
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def _ingest_and_store(
    context: AppContext, upload: Path, fields: UploadFields, key: str, marker: InflightUpload
) -> IngestReport:
    """Ingest into the storage folder itself when it is local; else into a staging folder beside the
    upload's marker (swept with it if the process dies), uploaded with its manifest last."""
    local = context.storage.local_dir(key)
    if local is not None:
        return _ingest(context, upload, fields, local)
    staging = marker.staging_dir
    try:
        report = _ingest(context, upload, fields, staging)
        context.storage.put_tree(key, staging, last=MANIFEST_FILE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _ingest(context: AppContext, upload: Path, fields: UploadFields, dest: Path) -> IngestReport:
    settings = context.settings
    limits = IngestLimits(
        max_pairs=settings.max_pairs,
        max_image_bytes=settings.max_image_bytes,
        max_image_pixels=settings.max_image_pixels,
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        return ingest_upload(
            upload, fields.filename, dest, limits=limits, kind=fields.kind, trigger_word=fields.trigger_word
        )
    except IngestRejected as exc:
        problems = [p.model_dump() for p in exc.problems]
        raise DatasetRejected(f"{fields.filename}: {exc}", problems) from None


def _request_hash(file_sha256: str, fields: UploadFields) -> str:
    """What an Idempotency-Key's upload is: its file, name and kind, and its trigger word where it has one
    (left out otherwise, so the hashes recorded before trigger words still match their uploads)."""
    request: list[str] = [file_sha256, fields.name or fields.filename, fields.kind]
    if fields.trigger_word is not None:
        request.append(fields.trigger_word)
    return hashlib.sha256(json.dumps(request).encode()).hexdigest()


def _replayed(dataset: Dataset, request_hash: str) -> DatasetOut:
    if dataset.request_hash != request_hash:
        raise Conflict(
            "Idempotency-Key was already used for a different upload (file, name, kind or trigger word)",
            param="Idempotency-Key",
            code="idempotency_key_reused",
        )
    return dataset_out(dataset)


def pair_out(
    dataset_id: str, index: int, prompt: str, *, kind: DatasetKind | None = "pairs", masked: bool = False
) -> PreviewPairOut:
    """A pair with the URLs of its images (and mask); the side the base model draws at job start has none."""
    base = f"/v1/datasets/{dataset_id}/pairs/{index}"
    return PreviewPairOut(
        index=index,
        prompt=prompt,
        chosen_url=None if kind == "avoid" else f"{base}/chosen",
        rejected_url=None if kind == "targets" else f"{base}/rejected",
        mask_url=f"{base}/mask" if masked else None,
    )


def dataset_out(dataset: Dataset) -> DatasetOut:
    """The dataset as its row records it: nothing is read from storage."""
    kind = dataset.kind
    preview = [
        pair_out(dataset.id, i, p["prompt"], kind=kind, masked=bool(p.get("masked")))
        for i, p in enumerate(dataset.preview)
    ]
    return DatasetOut(
        id=dataset.id,
        name=dataset.name,
        status=dataset.status,
        kind=kind,
        num_pairs=dataset.num_pairs,
        bytes=dataset.bytes,
        sha256=dataset.sha256,
        preview=preview,
        captions_missing=dataset.captions_missing,
        created_at=dataset.created_at,
    )


def require_dataset(session: Session, tenant: Tenant, dataset_id: str) -> Dataset:
    """The tenant's dataset or 404 (also for another tenant's)."""
    dataset = dataset_repo.get_dataset(session, dataset_id, tenant_id=tenant.id)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} not found", param="dataset_id")
    return dataset


def get_dataset(session: Session, tenant: Tenant, dataset_id: str) -> DatasetOut:
    return dataset_out(require_dataset(session, tenant, dataset_id))


def list_datasets(
    session: Session, tenant: Tenant, *, limit: int, after: str | None
) -> ListResponse[DatasetOut]:
    page = dataset_repo.list_datasets(session, tenant_id=tenant.id, limit=limit, after=after)
    data = [dataset_out(d) for d in page.items]
    return ListResponse[DatasetOut](data=data, has_more=page.has_more)


def delete_dataset(session: Session, context: AppContext, tenant: Tenant, dataset_id: str) -> None:
    """Delete the row now and the files once that commits; 409 while an unfinished job uses it."""
    dataset = require_dataset(session, tenant, dataset_id)
    if dataset_repo.dataset_in_use(session, dataset.id):
        raise Conflict(f"dataset {dataset_id} is used by a job that has not finished", code="dataset_in_use")
    key = dataset.storage_key
    dataset_repo.delete_dataset(session, dataset)
    after_commit(session, lambda: context.storage.delete_tree(key))


def pair_image(
    session: Session, context: AppContext, tenant: Tenant, dataset_id: str, *, n: int, role: str
) -> FileDownload:
    """The file `role` (chosen, rejected or mask) of pair `n`, found reading the rows line by line."""
    dataset = require_dataset(session, tenant, dataset_id)
    key = _pair_image_key(context, dataset, n=n, role=role)
    suffix = "." + key.rsplit(".", 1)[-1].lower()
    media_type = IMAGE_MEDIA_TYPES.get(suffix, "application/octet-stream")
    try:
        return stored_download(context.storage, key, media_type=media_type, filename=key.rsplit("/", 1)[-1])
    except FileNotFoundError:
        raise NotFound(f"dataset {dataset.id} has lost the {role} image of pair {n}", param="n") from None


def _pair_image_key(context: AppContext, dataset: Dataset, *, n: int, role: str) -> str:
    storage, key = context.storage, dataset.storage_key
    try:
        manifest = read_stored_manifest(storage, key)
        for index, pair in enumerate(iter_uploaded_pairs(storage, key, manifest)):
            if index == n:
                return image_key(key, _uploaded_side(dataset, pair, n=n, role=role))
    except (DatasetFormatError, FileNotFoundError) as exc:
        raise NotFound(f"dataset {dataset.id} files are unreadable: {exc}", param="dataset_id") from None
    raise NotFound(f"dataset {dataset.id} has no pair {n} (it has {dataset.num_pairs})", param="n")


def list_pairs(
    session: Session, context: AppContext, tenant: Tenant, dataset_id: str, *, limit: int, after: int | None
) -> ListResponse[PreviewPairOut]:
    """A page of pairs in file order after pair index `after`, read line by line from the rows file."""
    dataset = require_dataset(session, tenant, dataset_id)
    storage, key = context.storage, dataset.storage_key
    start = 0 if after is None else after + 1
    data: list[PreviewPairOut] = []
    try:
        manifest = read_stored_manifest(storage, key)
        kind = manifest.kind
        for index, pair in enumerate(iter_uploaded_pairs(storage, key, manifest)):
            if index < start:
                continue
            if len(data) == limit:
                return ListResponse[PreviewPairOut](data=data, has_more=True)
            data.append(pair_out(dataset.id, index, pair.prompt, kind=kind, masked=pair.mask is not None))
    except (DatasetFormatError, FileNotFoundError) as exc:
        raise NotFound(f"dataset {dataset.id} files are unreadable: {exc}", param="dataset_id") from None
    return ListResponse[PreviewPairOut](data=data, has_more=False)


def _uploaded_side(dataset: Dataset, pair: StoredPair, *, n: int, role: str) -> str:
    if role == "mask":
        if pair.mask is None:
            raise NotFound(f"pair {n} of dataset {dataset.id} has no mask", param="role")
        return pair.mask
    path = pair.chosen if role == "chosen" else pair.rejected
    if path is None:
        raise NotFound(
            f"the {role} image of pair {n} of dataset {dataset.id} is not uploaded: the job's base model "
            "draws it when a job starts",
            param="role",
        )
    return path

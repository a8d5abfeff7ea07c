"""Resumable upload routes: the tus 1.0 protocol (creation, expiration, termination) under /v1/uploads,
and the step that makes a complete upload a dataset. The bytes are kept by api/services/uploads.py."""

from __future__ import annotations

import base64
import binascii
import logging
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Annotated

import anyio
from fastapi import APIRouter, Body, Header, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from api.deps import ContextDep, CurrentTenant, SessionDep
from api.errors import ApiError, InvalidRequest
from api.request_stream import write_body
from api.schemas import INT64_MAX, DatasetOut, ErrorResponse
from api.services import upload_datasets
from api.services.upload_datasets import DatasetFromUpload
from api.services.uploads import UploadState, UploadStore

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/uploads", tags=["uploads"], responses={404: {"model": ErrorResponse}})

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,expiration,termination"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"


class UploadOut(BaseModel):
    """A resumable upload: how much of it the server holds, and the dataset it became."""

    id: str = Field(examples=["up_0643f1c2a0b1d2e3f4a5b6c7d8"])
    filename: str
    length: int = Field(description="The declared size in bytes (Upload-Length).")
    offset: int = Field(description="Bytes the server holds; resume from here.")
    expires_at: datetime = Field(description="When it is removed if nothing more arrives.")
    dataset_id: str | None = Field(description="The dataset made from it, once POST .../dataset succeeded.")

    @classmethod
    def of(cls, state: UploadState) -> UploadOut:
        info = state.info
        expires_at = datetime.fromtimestamp(state.expires_at, UTC)
        return cls(
            id=info.id,
            filename=info.filename,
            length=info.length,
            offset=state.offset,
            expires_at=expires_at,
            dataset_id=info.dataset_id,
        )


class UnsupportedTusVersion(ApiError):
    status_code, code = 412, "unsupported_tus_version"


class UnsupportedMediaType(ApiError):
    status_code, code = 415, "unsupported_media_type"


TusResumable = Annotated[
    str | None, Header(description=f"The tus protocol version; must be {TUS_VERSION}.", max_length=32)
]
UPLOAD_HEADERS = {
    "Upload-Offset": {"description": "Bytes the server holds.", "schema": {"type": "integer"}},
    "Upload-Length": {"description": "The declared size.", "schema": {"type": "integer"}},
    "Upload-Expires": {"description": "When an untouched upload is removed (RFC 9110 date).", "schema": {}},
}


def _check_version(tus_resumable: str | None) -> None:
    if tus_resumable != TUS_VERSION:
        raise UnsupportedTusVersion(
            f"Tus-Resumable must be {TUS_VERSION} (got {tus_resumable!r})", param="Tus-Resumable"
        )


def _headers(state: UploadState) -> dict[str, str]:
    return {
        "Tus-Resumable": TUS_VERSION,
        "Upload-Offset": str(state.offset),
        "Upload-Length": str(state.info.length),
        "Upload-Expires": formatdate(state.expires_at, usegmt=True),
        "Cache-Control": "no-store",
    }


def _filename(metadata: str | None) -> str:
    """The `filename` entry of tus Upload-Metadata (`key base64value` pairs, comma separated)."""
    for pair in (metadata or "").split(","):
        key, _, value = pair.strip().partition(" ")
        if key != "filename":
            continue
        try:
            return base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidRequest("filename is not base64 of UTF-8 text", param="Upload-Metadata") from None
    return "upload"


@router.options("", status_code=status.HTTP_204_NO_CONTENT)
def discover(context: ContextDep, tenant: CurrentTenant) -> Response:
    """tus discovery: the protocol versions, extensions and largest upload this server takes."""
    headers = {
        "Tus-Resumable": TUS_VERSION,
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": TUS_EXTENSIONS,
        "Tus-Max-Size": str(context.settings.max_upload_bytes),
    }
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers=headers)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        201: {"headers": {"Location": {"description": "The upload's URL.", "schema": {}}, **UPLOAD_HEADERS}},
        412: {"model": ErrorResponse},
        413: {"model": ErrorResponse},
        429: {"model": ErrorResponse},
        507: {"model": ErrorResponse},
    },
)
def create_upload(
    response: Response,
    context: ContextDep,
    tenant: CurrentTenant,
    upload_length: Annotated[
        int, Header(ge=0, le=INT64_MAX, description="The size of the whole file, in bytes.")
    ],
    tus_resumable: TusResumable = None,
    upload_metadata: Annotated[
        str | None,
        Header(max_length=4096, description="tus metadata; `filename` (base64) names the file."),
    ] = None,
) -> UploadOut:
    """Open a resumable upload of `Upload-Length` bytes; send them with PATCH, then make it a dataset."""
    _check_version(tus_resumable)
    state = UploadStore(context.settings).create(
        tenant.id, length=upload_length, filename=_filename(upload_metadata)
    )
    response.headers.update(_headers(state) | {"Location": f"/v1/uploads/{state.info.id}"})
    return UploadOut.of(state)


@router.head("/{upload_id}", responses={200: {"headers": UPLOAD_HEADERS}, 412: {"model": ErrorResponse}})
def upload_offset(
    context: ContextDep, tenant: CurrentTenant, upload_id: str, tus_resumable: TusResumable = None
) -> Response:
    """The offset to resume from (`Upload-Offset`)."""
    _check_version(tus_resumable)
    state = UploadStore(context.settings).get(tenant.id, upload_id)
    return Response(status_code=status.HTTP_200_OK, headers=_headers(state))


@router.get("/{upload_id}")
def get_upload(context: ContextDep, tenant: CurrentTenant, upload_id: str) -> UploadOut:
    """The upload's state as JSON, with the dataset it became once it is one."""
    return UploadOut.of(UploadStore(context.settings).get(tenant.id, upload_id))


@router.patch(
    "/{upload_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        204: {"headers": UPLOAD_HEADERS},
        408: {"model": ErrorResponse},
        409: {"model": ErrorResponse},
        412: {"model": ErrorResponse},
        413: {"model": ErrorResponse},
        415: {"model": ErrorResponse},
        429: {"model": ErrorResponse},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {OFFSET_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def append_to_upload(
    request: Request,
    context: ContextDep,
    tenant: CurrentTenant,
    upload_id: str,
    upload_offset: Annotated[
        int, Header(ge=0, le=INT64_MAX, description="The offset this part starts at (HEAD tells it).")
    ],
    tus_resumable: TusResumable = None,
) -> Response:
    """Send the next part. A part cut short keeps what arrived: ask HEAD for the offset and go on."""
    _check_version(tus_resumable)
    if request.headers.get("content-type", "").split(";")[0].strip() != OFFSET_CONTENT_TYPE:
        raise UnsupportedMediaType(
            f"a part's Content-Type must be {OFFSET_CONTENT_TYPE}", param="Content-Type"
        )
    store = UploadStore(context.settings)
    with context.upload_slots.hold(tenant.id):
        part = await run_in_threadpool(store.open_part, tenant.id, upload_id, offset=upload_offset)
        try:
            await write_body(request.stream(), part.write)
        except ClientDisconnect:
            # Nobody is left to answer; what arrived is kept and HEAD will say so.
            log.info("upload %s: the client went away mid-part", upload_id)
            return Response(status_code=status.HTTP_400_BAD_REQUEST)
        finally:
            # Shielded: a cancelled request must still sync what arrived and release the upload's lock.
            with anyio.CancelScope(shield=True):
                state = await run_in_threadpool(part.close)
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers=_headers(state))


@router.delete(
    "/{upload_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={409: {"model": ErrorResponse}, 412: {"model": ErrorResponse}},
)
def delete_upload(
    context: ContextDep, tenant: CurrentTenant, upload_id: str, tus_resumable: TusResumable = None
) -> Response:
    """Abandon the upload and free what it received (tus termination)."""
    _check_version(tus_resumable)
    UploadStore(context.settings).delete(tenant.id, upload_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers={"Tus-Resumable": TUS_VERSION})


@router.post(
    "/{upload_id}/dataset",
    status_code=status.HTTP_201_CREATED,
    responses={409: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
def dataset_from_upload(
    session: SessionDep,
    context: ContextDep,
    tenant: CurrentTenant,
    upload_id: str,
    body: Annotated[DatasetFromUpload, Body()] = DatasetFromUpload(),  # noqa: B008 (a default of all defaults)
) -> DatasetOut:
    """Check and store the complete upload as a dataset, as POST /v1/datasets does a one-shot upload
    (the same fields, the same 422s). Repeating it answers with the same dataset."""
    return upload_datasets.dataset_from_upload(session, context, tenant, upload_id, body)

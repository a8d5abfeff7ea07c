"""What a job produced: checkpoints, validation samples and the adapter download."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from api.deps import ContextDep, CurrentTenant, SessionDep
from api.schemas import CheckpointOut, ErrorResponse, ListResponse, SampleOut
from api.services import outputs as service
from api.services.outputs import FileDownload

router = APIRouter(prefix="/v1/jobs", tags=["artifacts"], responses={404: {"model": ErrorResponse}})


def _stream(download: FileDownload) -> StreamingResponse:
    headers = {
        "Content-Length": str(download.size),
        "Content-Disposition": f'attachment; filename="{download.filename}"',
    }
    if download.sha256:
        headers |= {"X-Checksum-Sha256": download.sha256, "ETag": f'"{download.sha256}"'}
    return StreamingResponse(download.chunks, media_type=download.media_type, headers=headers)


@router.get("/{job_id}/checkpoints")
def list_checkpoints(session: SessionDep, tenant: CurrentTenant, job_id: str) -> ListResponse[CheckpointOut]:
    """Intermediate checkpoints kept on disk, with their step and metrics."""
    return service.list_checkpoints(session, tenant, job_id)


@router.get("/{job_id}/samples")
def list_samples(session: SessionDep, tenant: CurrentTenant, job_id: str) -> ListResponse[SampleOut]:
    """Validation images per step (with and without the LoRA), with download URLs."""
    return service.list_samples(session, tenant, job_id)


@router.get(
    "/{job_id}/samples/{sample_id}/image",
    response_class=StreamingResponse,
    responses={200: {"content": {"image/png": {}}}},
)
def sample_image(
    session: SessionDep, context: ContextDep, tenant: CurrentTenant, job_id: str, sample_id: int
) -> StreamingResponse:
    """One validation image."""
    return _stream(service.sample_image(session, context, tenant, job_id, sample_id))


@router.get(
    "/{job_id}/adapter",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The LoRA as .safetensors"}},
)
def download_adapter(
    session: SessionDep,
    context: ContextDep,
    tenant: CurrentTenant,
    job_id: str,
    format: Annotated[
        Literal["diffusers", "kohya"], Query(description="diffusers or kohya (ComfyUI).")
    ] = "diffusers",
) -> StreamingResponse:
    """The trained LoRA adapter, streamed, with its sha256 in `X-Checksum-Sha256` and `ETag`."""
    return _stream(service.adapter(session, context, tenant, job_id, format=format))

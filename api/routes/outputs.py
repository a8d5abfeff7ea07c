"""What a job produced: checkpoints, validation samples and the adapter download."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response, StreamingResponse

from api.deps import ContextDep, CurrentTenant, SessionDep
from api.routes.downloads import REDIRECT_RESPONSE, file_response
from api.schemas import INT32_MAX, CheckpointOut, ErrorResponse, ListResponse, SampleOut
from api.services import outputs as service

router = APIRouter(prefix="/v1/jobs", tags=["artifacts"], responses={404: {"model": ErrorResponse}})


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
    responses={200: {"content": {"image/png": {}}}, **REDIRECT_RESPONSE},
)
def sample_image(
    session: SessionDep,
    context: ContextDep,
    tenant: CurrentTenant,
    job_id: str,
    sample_id: Annotated[int, Path(ge=0, le=INT32_MAX, description="The sample's id (GET .../samples).")],
) -> Response:
    """One validation image."""
    return file_response(service.sample_image(session, context, tenant, job_id, sample_id))


@router.get(
    "/{job_id}/adapter",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The LoRA as .safetensors"},
        **REDIRECT_RESPONSE,
    },
)
def download_adapter(
    session: SessionDep,
    context: ContextDep,
    tenant: CurrentTenant,
    job_id: str,
    format: Annotated[
        Literal["diffusers", "kohya"], Query(description="diffusers or kohya (ComfyUI).")
    ] = "diffusers",
) -> Response:
    """The trained LoRA adapter, streamed, with its sha256 in `X-Checksum-Sha256` and `ETag` (or a 307
    to a presigned URL of the object store, where configured)."""
    return file_response(service.adapter(session, context, tenant, job_id, format=format))

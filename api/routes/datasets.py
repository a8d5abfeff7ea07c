"""Dataset routes: upload, list, inspect, delete, page through the pairs, and the images of one pair."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query, Request, status
from fastapi.responses import Response, StreamingResponse

from api.deps import ContextDep, CurrentTenant, SessionDep
from api.routes.downloads import REDIRECT_RESPONSE, file_response
from api.schemas import INT64_MAX, DatasetOut, ErrorResponse, ListResponse, PreviewPairOut
from api.services import datasets as service
from api.services.upload_form import UPLOAD_FORM_SCHEMA

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses={404: {"model": ErrorResponse}})

Limit = Annotated[int, Query(ge=1, le=200, description="Page size.")]
After = Annotated[str | None, Query(description="Id of the last item of the previous page.")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        408: {"model": ErrorResponse},
        409: {"model": ErrorResponse},
        413: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        429: {"model": ErrorResponse},
        507: {"model": ErrorResponse},
    },
    # The body is parsed as it arrives (api/services/upload_form.py), not by FastAPI: its form is stated here.
    openapi_extra={
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": UPLOAD_FORM_SCHEMA}}}
    },
)
async def upload_dataset(
    request: Request,
    session: SessionDep,
    context: ContextDep,
    tenant: CurrentTenant,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=255,
            description="Repeat an upload safely: the same key with the same file, name and kind returns "
            "the same dataset; with anything else, 409 idempotency_key_reused.",
        ),
    ] = None,
) -> DatasetOut:
    """Upload a preference dataset; every problem is listed with its row and field.

    Besides a manifest (`pairs.jsonl` / `pairs.csv`) or a parquet file, an archive may hold, with no
    manifest:

    - pair folders (kind `pairs`): `w/cat.png`, `l/cat.png` and `cat.txt` ("a cat on a sofa"), or one
      `captions.jsonl` of `{"file_name": "cat.png", "caption": "a cat on a sofa"}` beside `w/` and `l/`;
    - captioned images (kind `targets`): `cat1.png` and `cat1.txt` ("a photo of [trigger] cat"); with
      `trigger_word=sks` it trains "a photo of sks cat" against the base model's "a photo of cat";
    - parquet shards (any kind): `data/train-00000-of-00004.parquet`, ... and nothing else, read in name
      order as one parquet of all their rows.
    """
    with context.upload_slots.hold(tenant.id):
        return await service.upload_dataset(
            session,
            context,
            tenant,
            body=request.stream(),
            content_type=request.headers.get("content-type", ""),
            declared_bytes=_content_length(request),
            idempotency_key=idempotency_key,
        )


def _content_length(request: Request) -> int:
    """The body's declared size; 0 for a chunked body, which only a full disk stops (507 as it writes)."""
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isdigit() else 0


@router.get("")
def list_datasets(
    session: SessionDep, tenant: CurrentTenant, limit: Limit = 20, after: After = None
) -> ListResponse[DatasetOut]:
    """List your datasets, newest first."""
    return service.list_datasets(session, tenant, limit=limit, after=after)


@router.get("/{dataset_id}")
def get_dataset(session: SessionDep, tenant: CurrentTenant, dataset_id: str) -> DatasetOut:
    """Inspect a dataset: pairs, bytes, sha256 and a preview."""
    return service.get_dataset(session, tenant, dataset_id)


@router.delete(
    "/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT, responses={409: {"model": ErrorResponse}}
)
def delete_dataset(session: SessionDep, context: ContextDep, tenant: CurrentTenant, dataset_id: str) -> None:
    """Delete a dataset and its files (409 while an unfinished job uses it)."""
    service.delete_dataset(session, context, tenant, dataset_id)


@router.get("/{dataset_id}/pairs")
def list_pairs(
    session: SessionDep,
    context: ContextDep,
    tenant: CurrentTenant,
    dataset_id: str,
    limit: Limit = 20,
    after: Annotated[
        int | None, Query(ge=0, le=INT64_MAX, description="Index of the last pair of the previous page.")
    ] = None,
) -> ListResponse[PreviewPairOut]:
    """Page through a dataset's pairs in file order: prompt and the URLs of its two images."""
    return service.list_pairs(session, context, tenant, dataset_id, limit=limit, after=after)


@router.get(
    "/{dataset_id}/pairs/{n}/{role}",
    response_class=StreamingResponse,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}, **REDIRECT_RESPONSE},
)
def pair_image(
    session: SessionDep,
    context: ContextDep,
    tenant: CurrentTenant,
    dataset_id: str,
    n: Annotated[int, Path(ge=0, le=INT64_MAX, description="0-based pair index.")],
    role: Literal["chosen", "rejected", "mask"],
) -> Response:
    """One image of pair `n`, for the dashboard: its chosen or rejected image, or its preference mask (404
    for a pair without one)."""
    download = service.pair_image(session, context, tenant, dataset_id, n=n, role=role)
    return file_response(download, attachment=False)

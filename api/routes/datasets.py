"""Dataset routes: upload, list, inspect, delete, page through the pairs, and the images of one pair."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Header, Path, Query, UploadFile, status
from fastapi.responses import Response, StreamingResponse

from api.deps import ContextDep, CurrentTenant, SessionDep
from api.routes.files import REDIRECT_RESPONSE, file_response
from api.schemas import INT64_MAX, DatasetOut, ErrorResponse, ListResponse, PreviewPairOut
from api.services import datasets as service
from trainer.dataset_format import DatasetKind

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses={404: {"model": ErrorResponse}})

Limit = Annotated[int, Query(ge=1, le=200, description="Page size.")]
MAX_NAME_CHARS = 200
After = Annotated[str | None, Query(description="Id of the last item of the previous page.")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={409: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
def upload_dataset(
    session: SessionDep,
    context: ContextDep,
    tenant: CurrentTenant,
    file: Annotated[
        UploadFile,
        File(description="A .zip or .tar(.gz) with pairs.jsonl or pairs.csv and images, or a parquet."),
    ],
    name: Annotated[
        str | None,
        Form(
            max_length=MAX_NAME_CHARS,
            description="Display name; defaults to the file name (its last 200 characters).",
        ),
    ] = None,
    kind: Annotated[
        DatasetKind,
        Form(
            description="pairs: rows of prompt, chosen, rejected (parquet: Pick-a-Pic columns). targets: "
            "rows of prompt, image (the image wanted) and an optional generation_prompt; at job start the "
            "base model draws each rejected image from generation_prompt, or from prompt if it is absent. "
            "avoid: rows of prompt, image (the image to steer away from) and a required generation_prompt, "
            "from which the base model draws the chosen image. In parquet, image holds the encoded bytes."
        ),
    ] = "pairs",
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=255,
            description="Repeat an upload safely: the same key with the same file, name and kind returns "
            "the same dataset; with anything else, 409 idempotency_key_reused.",
        ),
    ] = None,
) -> DatasetOut:
    """Upload a preference dataset; every problem is listed with its row and field."""
    # The file name becomes the display name when none is given, so it has the name's bound too.
    filename = (file.filename or "upload")[-MAX_NAME_CHARS:]
    return service.upload_dataset(
        session,
        context,
        tenant,
        stream=file.file,
        filename=filename,
        name=name,
        kind=kind,
        idempotency_key=idempotency_key,
    )


@router.get("")
def list_datasets(
    session: SessionDep, context: ContextDep, tenant: CurrentTenant, limit: Limit = 20, after: After = None
) -> ListResponse[DatasetOut]:
    """List your datasets, newest first."""
    return service.list_datasets(session, context, tenant, limit=limit, after=after)


@router.get("/{dataset_id}")
def get_dataset(
    session: SessionDep, context: ContextDep, tenant: CurrentTenant, dataset_id: str
) -> DatasetOut:
    """Inspect a dataset: pairs, bytes, sha256 and a preview."""
    return service.get_dataset(session, context, tenant, dataset_id)


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
    role: Literal["chosen", "rejected"],
) -> Response:
    """One image of pair `n`, for the dashboard."""
    download = service.pair_image(session, context, tenant, dataset_id, n=n, role=role)
    return file_response(download, attachment=False)

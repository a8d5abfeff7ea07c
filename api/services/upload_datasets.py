"""Making a complete resumable upload a dataset: the same checks and storage as a one-shot upload
(api/services/datasets.py), with the upload's id as the Idempotency-Key, so that a repeat, a retry
whose answer was lost, or two racing requests all end with one dataset."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, create_model
from sqlalchemy.orm import Session

from api.deps import AppContext
from api.errors import Conflict, DatasetRejected, NotFound
from api.schemas import DatasetOut
from api.services import datasets
from api.services.uploads import UploadStore
from core.db import after_commit
from core.models import Tenant

if TYPE_CHECKING:

    class DatasetFromUpload(BaseModel):
        """The fields of POST /v1/datasets' form but the file."""

else:
    # Built from the one-shot form's own fields, so a field added there is taken here too.
    DatasetFromUpload = create_model(
        "DatasetFromUpload",
        __config__=ConfigDict(extra="forbid"),
        __doc__="The fields of POST /v1/datasets' form but the file, as JSON.",
        **{
            name: (field.annotation, field)
            for name, field in datasets.UploadFields.model_fields.items()
            if name != "filename"
        },
    )


def idempotency_key(upload_id: str) -> str:
    return f"upload:{upload_id}"


def dataset_from_upload(
    session: Session, context: AppContext, tenant: Tenant, upload_id: str, body: BaseModel
) -> DatasetOut:
    """Check and store the complete upload `upload_id` as a dataset with the fields of `body`; its bytes
    are freed once the dataset is committed, and at once, with the upload, if its content is refused."""
    store = UploadStore(context.settings)
    fields: dict[str, Any] = body.model_dump(exclude_unset=True)
    with store.completed(tenant.id, upload_id) as (state, data):
        if state.info.dataset_id is not None:
            return _made_before(session, tenant, state.info.dataset_id)
        try:
            dataset = datasets.dataset_from_file(
                session,
                context,
                tenant,
                source=data,
                filename=state.info.filename,
                fields=fields,
                idempotency_key=idempotency_key(upload_id),
            )
        except DatasetRejected:
            # Its bytes can never become a dataset: free them and the tenant's place now, not in a day.
            # (A refused field, by contrast, leaves the upload as it was, to be tried with other fields.)
            store.remove_refused(state)
            raise
    after_commit(session, lambda: store.mark_dataset(tenant.id, upload_id, dataset.id))
    return dataset


def _made_before(session: Session, tenant: Tenant, dataset_id: str) -> DatasetOut:
    try:
        return datasets.get_dataset(session, tenant, dataset_id)
    except NotFound:
        raise Conflict(
            f"the upload became dataset {dataset_id}, which was deleted since",
            param="upload_id",
            code="upload_finished",
        ) from None

"""All tables; importing this package registers every model on `Base.metadata` (Alembic relies on it)."""

from core.models.base import Base, new_id, utcnow
from core.models.datasets import Dataset, DatasetStatus
from core.models.events import EventLevel, JobEvent
from core.models.jobs import ACTIVE_STATUSES, FINISHED_STATUSES, HELD_STATUSES, JOB_STATUSES, Job, JobStatus
from core.models.metrics import Metric
from core.models.outputs import Artifact, ArtifactFormat, Checkpoint, Sample
from core.models.tenants import ApiKey, Tenant
from core.models.webhooks import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookEvent, WebhookSecret
from core.models.workers import DeviceKind, Worker

__all__ = [
    "ACTIVE_STATUSES",
    "FINISHED_STATUSES",
    "HELD_STATUSES",
    "JOB_STATUSES",
    "ApiKey",
    "Artifact",
    "ArtifactFormat",
    "Base",
    "Checkpoint",
    "Dataset",
    "DatasetStatus",
    "DeliveryStatus",
    "DeviceKind",
    "EventLevel",
    "Job",
    "JobEvent",
    "JobStatus",
    "Metric",
    "Sample",
    "Tenant",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEvent",
    "WebhookSecret",
    "Worker",
    "new_id",
    "utcnow",
]

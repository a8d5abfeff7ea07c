"""Workers: the shared pool of training workers, with what each advertises and whether it is alive."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from api.deps import AppContext
from api.schemas import ListResponse, WorkerOut, WorkerStatus
from core.models import Worker, utcnow
from core.repositories import workers as worker_repo


def list_workers(
    session: Session, context: AppContext, *, status: WorkerStatus | None
) -> ListResponse[WorkerOut]:
    """Every worker known to the database (or only those in `status`), by id."""
    # A worker stamps its row on every reconciler tick; one silent for a heartbeat timeout is gone.
    online_after = utcnow() - timedelta(seconds=context.settings.heartbeat_timeout_seconds)
    rows = [worker_out(w, online_after=online_after) for w in worker_repo.list_workers(session)]
    return ListResponse[WorkerOut](data=[w for w in rows if status in (None, w.status)], has_more=False)


def worker_out(worker: Worker, *, online_after: datetime) -> WorkerOut:
    if worker.stopped_at is not None:
        status: WorkerStatus = "stopped"
    else:
        status = "online" if worker.last_seen_at >= online_after else "offline"
    return WorkerOut.model_validate(
        {
            "id": worker.id,
            "hostname": worker.hostname,
            "queues": worker.queues,
            "device": worker.device,
            "gpu_model": worker.gpu_model,
            "gpu_memory_mb": worker.gpu_memory_mb,
            "gpu_count": worker.gpu_count,
            "version": worker.version,
            "status": status,
            "started_at": worker.started_at,
            "last_seen_at": worker.last_seen_at,
        }
    )

"""Run one job: claim the row, train, record, finish. Safe to call twice for the same job id.

A second delivery finds the row no longer `queued` and does nothing, so a job never trains twice; a job
that was claimed resumes from the newest checkpoint in its output folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from core import lifecycle
from core.job_errors import JobErrorCode, error_code
from core.lifecycle import JobFailure
from core.models import Job, JobStatus
from core.storage import Storage, dataset_key, job_key
from trainer.errors import TrainingError
from trainer.spec import TrainSpec
from worker import shutdown
from worker.context import WorkerContext
from worker.devices import available_gpus, check_fits
from worker.memory_errors import out_of_memory
from worker.recorder import Recorder
from worker.retry import retry_transient
from worker.staging import JobOutputs, local_dirs, share_generated, staged_inputs

log = logging.getLogger(__name__)
Outcome = Literal["skipped", "succeeded", "failed", "cancelled", "abandoned", "requeued"]


class JobSetupError(Exception):
    def __init__(self, code: JobErrorCode, message: str) -> None:
        super().__init__(message)
        self.failure = JobFailure(code, message)


@dataclass(frozen=True)
class Plan:
    """The trainer's inputs; `dataset_dir` and `output_dir` are local folders (staged from `dataset_key`
    and `output_key` by worker.staging when storage is an object store)."""

    spec: TrainSpec
    dataset_id: str
    dataset_dir: Path
    output_dir: Path
    dataset_key: str
    output_key: str


def run_job(job_id: str, ctx: WorkerContext) -> Outcome:
    """Claim and run `job_id`; returns how it ended ("skipped" if another delivery owns it)."""
    with ctx.db.session_scope() as session:
        job = lifecycle.claim(session, job_id, worker_id=ctx.worker_id, producer=ctx.producer)
        if job is None:
            log.info("job %s is not queued any more; this delivery does nothing", job_id)
            return "skipped"
        try:
            plan = plan_job(job, ctx)
        except JobSetupError as exc:
            plan = None
            setup_error = exc
    if plan is None:
        return _finish(ctx, job_id, JobStatus.FAILED, setup_error.failure)
    return _train(ctx, job_id, plan)


def plan_job(job: Job, ctx: WorkerContext) -> Plan:
    """Resolve the job's public names into the trainer's inputs: a base-model location and folders."""
    base_model = job.spec.get("base_model")
    if base_model not in ctx.settings.base_models:
        message = f"base model {base_model!r} is no longer configured"
        raise JobSetupError(JobErrorCode.UNKNOWN_BASE_MODEL, message)
    if job.dataset_id is None:
        raise JobSetupError(JobErrorCode.DATASET_MISSING, "the job's dataset was deleted")
    try:
        spec = TrainSpec.model_validate(
            {**job.spec, "base_model": ctx.settings.base_model_location(base_model)}
        )
    except ValidationError as exc:
        raise JobSetupError(JobErrorCode.INVALID_SPEC, str(exc)) from exc
    keys = {
        "dataset_key": dataset_key(job.tenant_id, job.dataset_id),
        "output_key": job_key(job.tenant_id, job.id),
    }
    dataset_dir, output_dir = local_dirs(ctx.storage, ctx.settings, **keys)
    return Plan(spec=spec, dataset_id=job.dataset_id, dataset_dir=dataset_dir, output_dir=output_dir, **keys)


def _train(ctx: WorkerContext, job_id: str, plan: Plan) -> Outcome:
    # Heartbeats start before torch is imported (and before inputs are fetched): either alone can take
    # longer than a heartbeat timeout.
    outputs = JobOutputs(ctx.storage, plan.output_key, plan.output_dir)
    recorder = Recorder(
        ctx.db, job_id, worker_id=ctx.worker_id, outputs=outputs, producer=ctx.producer
    ).start()
    failure: JobFailure | None = None
    try:
        status: JobStatus | Literal["requeued"] = JobStatus.SUCCEEDED
        with staged_inputs(ctx.storage, ctx.settings, outputs, plan.dataset_key):
            stopped = _prepare_and_train(
                plan, recorder, storage=ctx.storage, gpus=available_gpus(ctx.settings)
            )
        if stopped:
            status = "requeued" if shutdown.requested() else JobStatus.CANCELLED
    except TrainingError as exc:
        status, failure = JobStatus.FAILED, _out_of_memory(exc) or _training_failure(exc)
    except Exception as exc:
        log.exception("job %s crashed", job_id)
        status = JobStatus.FAILED
        unexpected = JobFailure(JobErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
        failure = _out_of_memory(exc) or unexpected
    finally:
        try:
            recorder.close()
            outputs.discard_local()  # everything it holds is stored now
        except Exception as exc:
            # The job must still end (below) rather than stay `running` with no worker behind it; and
            # not as succeeded when its adapter may be neither stored nor recorded.
            log.exception("job %s: could not write its last events", job_id)
            if status == JobStatus.SUCCEEDED:
                status = JobStatus.FAILED
                message = f"its last outputs could not be stored or recorded: {type(exc).__name__}: {exc}"
                failure = JobFailure(JobErrorCode.OUTPUTS_NOT_STORED, message)
    if recorder.lease.lost_ownership:
        return _abandoned(job_id)
    if status == "requeued":
        return _hand_back(ctx, job_id)
    return _finish(ctx, job_id, status, failure)


def _out_of_memory(exc: BaseException) -> JobFailure | None:
    """An `out_of_memory` failure if an allocation failure (CUDA's or the host's) ended the job."""
    message = out_of_memory(exc)
    return None if message is None else JobFailure(JobErrorCode.OUT_OF_MEMORY, message)


def _training_failure(exc: TrainingError) -> JobFailure:
    """The failure of a typed trainer error; one whose code the catalogue lacks (a test keeps them in
    step) ends as internal_error, its own code kept in the message."""
    code = error_code(exc.code)
    message = exc.message if code == exc.code else f"{exc.code}: {exc.message}"
    return JobFailure(code, message)


def _prepare_and_train(plan: Plan, recorder: Recorder, *, storage: Storage, gpus: int) -> bool:
    """Complete a targets or avoid dataset with the base model's images (or find them from an earlier
    run) and store them for other hosts, then train, in this process or (spec.gpus > 1) in one process
    per device, of the `gpus` this worker has; True if a stop request ended either first."""
    check_fits(plan.spec, gpus)
    from trainer.completion import complete_dataset  # torch loads here, in the worker process only
    from trainer.launch import train_data_parallel
    from trainer.loop import train

    def should_stop() -> bool:
        return recorder.lease.stop_requested.is_set() or shutdown.requested()

    pairs_dir = complete_dataset(
        plan.dataset_dir,
        plan.spec,
        seed_namespace=plan.dataset_id,
        on_event=recorder,
        should_stop=should_stop,
    )
    if pairs_dir is None:
        return True
    share_generated(storage, plan.dataset_key, plan.dataset_dir, pairs_dir)
    run = train if plan.spec.gpus == 1 else train_data_parallel
    return run(plan.spec, pairs_dir, plan.output_dir, on_event=recorder, should_stop=should_stop).stopped


def _hand_back(ctx: WorkerContext, job_id: str) -> Outcome:
    return retry_transient(lambda: _hand_back_once(ctx, job_id), what=f"job {job_id}: handing it back")


def _hand_back_once(ctx: WorkerContext, job_id: str) -> Outcome:
    """This worker is shutting down: the job (checkpointed at the step it reached) goes back to the
    queue with a fresh message, unless a cancel arrived meanwhile."""
    with ctx.db.session_scope() as session:
        status = lifecycle.requeue(
            session,
            job_id,
            reason=lifecycle.WORKER_SHUTTING_DOWN,
            producer=ctx.producer,
            worker_id=ctx.worker_id,
        )
    if status is None:
        return _abandoned(job_id)
    return "requeued" if status == JobStatus.QUEUED else "cancelled"


def _finish(ctx: WorkerContext, job_id: str, status: JobStatus, failure: JobFailure | None) -> Outcome:
    # Hours of training end here: wait out a database restart rather than leave the job `running`.
    return retry_transient(
        lambda: _finish_once(ctx, job_id, status, failure), what=f"job {job_id}: recording {status}"
    )


def _finish_once(ctx: WorkerContext, job_id: str, status: JobStatus, failure: JobFailure | None) -> Outcome:
    with ctx.db.session_scope() as session:
        ended = lifecycle.finish(
            session, job_id, outcome=status, worker_id=ctx.worker_id, producer=ctx.producer, failure=failure
        )
    if not ended:
        return _abandoned(job_id)
    return _OUTCOMES[status]


_OUTCOMES: dict[JobStatus, Outcome] = {
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}


def _abandoned(job_id: str) -> Outcome:
    # Requeued while this worker was silent (and perhaps running elsewhere now), or ended meanwhile: its
    # state, log and webhooks belong to whoever holds it.
    log.warning("job %s is no longer this worker's; leaving its state alone", job_id)
    return "abandoned"

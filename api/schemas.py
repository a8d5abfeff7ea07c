"""Request and response bodies of the v1 API (they also feed OpenAPI)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from core.job_errors import JobErrorCode, describe_codes
from core.models import DatasetStatus, DeliveryStatus, JobStatus, WebhookEvent
from core.queue import MAX_PRIORITY, MIN_PRIORITY
from trainer.dataset_format import DatasetKind
from trainer.families import FamilyName, Objective
from trainer.spec import MAX_SEED, Method, SpecConflict, TrainSpec, ValidationSpec

T = TypeVar("T")
# Past these, a 422: the largest integer an INTEGER column stores (event ids, sample ids, seeds), and the
# largest index into a dataset's file of rows (not stored in the database, but 64-bit everywhere else).
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
MetadataKey = Annotated[str, Field(min_length=1, max_length=MAX_METADATA_KEY_CHARS)]
MetadataValue = Annotated[str, Field(max_length=MAX_METADATA_VALUE_CHARS)]

# TrainSpec fields that the job body (and the job's JSON) carries at the top level rather than in
# `hyperparameters`. These two sets are the only mapping between a job's JSON and its stored spec, so a new
# TrainSpec field is a hyperparameter with no further edit.
TOP_LEVEL_SPEC_FIELDS = frozenset({"base_model", "method", "validation", "seed"})
HYPERPARAMETER_FIELDS = frozenset(TrainSpec.model_fields) - TOP_LEVEL_SPEC_FIELDS

if TYPE_CHECKING:

    class Hyperparameters(BaseModel):
        """Training fields of TrainSpec."""

else:
    # Built from TrainSpec's own fields, so the API's constraints and docs can never drift from the spec.
    Hyperparameters = create_model(
        "Hyperparameters",
        __config__=ConfigDict(extra="forbid"),
        __doc__="TrainSpec's training fields; each defaults to the MaPO reference recipe.",
        **{
            name: (f.annotation, f)
            for name, f in TrainSpec.model_fields.items()
            if name in HYPERPARAMETER_FIELDS
        },
    )


class ErrorBody(BaseModel):
    code: str = Field(examples=["not_found"])
    message: str = Field(examples=["job job_0123 not found"])
    param: str | None = Field(default=None, description="Dotted path of the offending field, if one.")


class ErrorResponse(BaseModel):
    error: ErrorBody


class ListResponse(BaseModel, Generic[T]):
    """A page of a list, newest first (events: oldest first); pass the last id as `after` for more."""

    data: list[T]
    has_more: bool


class PreviewPairOut(BaseModel):
    index: int
    prompt: str
    chosen_url: str | None = Field(
        description="The chosen image; null in an avoid dataset (the base model draws it at job start)."
    )
    rejected_url: str | None = Field(
        description="The rejected image; null in a targets dataset (the base model draws it at job start)."
    )
    mask_url: str | None = Field(
        default=None,
        description="The pair's preference mask (white where the preference applies), uploaded as the row's "
        "`mask`; null for a pair without one.",
    )


class DatasetOut(BaseModel):
    id: str = Field(examples=["ds_0643f1c2a0b1d2e3f4a5b6c7d8"])
    name: str
    status: DatasetStatus = Field(
        description="Always `ready`: a dataset is recorded only once its upload is validated and stored."
    )
    kind: DatasetKind | None = Field(
        description="pairs: both images uploaded; targets: the chosen images uploaded, the rejected ones "
        "drawn by the job's base model at job start; avoid: the rejected images uploaded, the chosen ones "
        "drawn from each row's generation_prompt. Null only for a dataset uploaded before this field was "
        "stored whose files could not be read."
    )
    num_pairs: int
    bytes: int = Field(description="Size of the upload as received.")
    sha256: str = Field(description="sha256 of the upload as received.")
    preview: list[PreviewPairOut]
    captions_missing: int | None = Field(
        default=None,
        description="For images uploaded with same-name .txt captions: how many had no caption (or a blank "
        "one) and are trained on the trigger word alone. Null for every other upload.",
    )
    created_at: datetime


MAX_WEBHOOKS_PER_JOB = 5
DEFAULT_WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("succeeded", "failed", "cancelled")


class Webhook(BaseModel):
    """A URL that receives this job's events as signed POSTs (Standard Webhooks; see
    `GET /v1/webhooks/secret` for the secret and the README for verifying a signature)."""

    model_config = ConfigDict(extra="forbid")

    url: HttpUrl = Field(description="http or https URL that receives the POSTs.")
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_EVENTS),
        min_length=1,
        description="Which events to deliver: started (first picked up by a worker), checkpoint (each "
        "saved checkpoint), succeeded, failed, cancelled. Default: the three endings.",
    )

    @field_validator("events")
    @classmethod
    def _no_repeats(cls, events: list[WebhookEvent]) -> list[WebhookEvent]:
        repeated = sorted({e for e in events if events.count(e) > 1})
        if repeated:
            raise ValueError(f"events are listed more than once: {', '.join(repeated)}")
        return events


class JobCreate(BaseModel):
    """A training job. The whole body is checked against TrainSpec, so a bad combination is a 422 here."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "dataset_id": "ds_0643f1c2a0b1d2e3f4a5b6c7d8",
                    "base_model": "tiny-sdxl",
                    "method": "mapo",
                    "hyperparameters": {"max_train_steps": 20, "learning_rate": 1e-4, "train_batch_size": 2},
                    "validation": {"prompts": ["a watercolor fox"], "every_n_steps": 10},
                    "metadata": {"experiment": "first-try"},
                    "seed": 0,
                }
            ]
        },
    )

    dataset_id: str = Field(max_length=100, description="A ready dataset of yours.")
    base_model: str = Field(
        max_length=200, description="One of the base models this server allows.", examples=["tiny-sdxl"]
    )
    method: Method = Field(default="mapo", description="mapo, dpo or sft.")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    validation: ValidationSpec = Field(default_factory=ValidationSpec)
    webhooks: list[Webhook] = Field(
        default_factory=list,
        max_length=MAX_WEBHOOKS_PER_JOB,
        description=f"Up to {MAX_WEBHOOKS_PER_JOB} URLs that receive this job's events, each URL once.",
    )
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict,
        max_length=50,
        description=f"Your own labels: up to 50, keys of 1-{MAX_METADATA_KEY_CHARS} and values of up to "
        f"{MAX_METADATA_VALUE_CHARS} characters; echoed in every read of the job and in its webhooks.",
    )
    seed: int = Field(
        default=0,
        ge=0,
        le=MAX_SEED,
        description="Seed of data order, noise, timesteps and LoRA init (below 2^31).",
    )
    queue: str | None = Field(
        default=None,
        max_length=100,
        description="Training queue, e.g. one per GPU class (`GET /v1/workers` shows which workers consume "
        "which); one of the server's MAPO_QUEUES. Default: the first of them.",
        examples=["mapo.gpu"],
    )
    priority: int = Field(
        default=0,
        ge=MIN_PRIORITY,
        le=MAX_PRIORITY,
        description="0-9: within its queue a waiting job of higher priority starts first (with the Redis "
        "broker; the embedded filesystem broker is first in, first out).",
    )

    @field_validator("webhooks")
    @classmethod
    def _distinct_urls(cls, hooks: list[Webhook]) -> list[Webhook]:
        urls = [str(h.url) for h in hooks]
        repeated = sorted({u for u in urls if urls.count(u) > 1})
        if repeated:
            raise ValueError(f"a URL may appear once; list its events together: {', '.join(repeated)}")
        return hooks

    @model_validator(mode="after")
    def _valid_train_spec(self) -> Self:
        try:
            self.to_spec()
        except ValidationError as exc:
            raise _as_spec_conflict(exc) from None
        return self

    def to_spec(self) -> TrainSpec:
        """The TrainSpec of this job; `base_model` is the public name (the worker resolves it)."""
        top_level = {name: getattr(self, name) for name in TOP_LEVEL_SPEC_FIELDS}
        return TrainSpec(**top_level, **self.hyperparameters.model_dump(exclude_unset=True))


def _as_spec_conflict(exc: ValidationError) -> SpecConflict:
    """Re-raise TrainSpec's first error as a SpecConflict named by its path in the job body."""
    error = exc.errors()[0]
    found = error.get("ctx", {}).get("error")
    if isinstance(found, SpecConflict):
        field, message = found.field, str(found)
    else:
        field, message = ".".join(str(p) for p in error["loc"]), error["msg"]
    head = field.split(".")[0]
    return SpecConflict(f"hyperparameters.{field}" if head in HYPERPARAMETER_FIELDS else field, message)


class Progress(BaseModel):
    step: int
    total_steps: int
    eta_seconds: float | None


class JobError(BaseModel):
    code: JobErrorCode = Field(
        examples=["non_finite_loss"], description="Why the job failed, one of:\n" + describe_codes()
    )
    message: str


class JobOut(BaseModel):
    id: str = Field(examples=["job_0643f1c2a0b1d2e3f4a5b6c7d8"])
    status: JobStatus
    dataset_id: str | None
    base_model: str
    method: str
    hyperparameters: dict[str, Any]
    validation: dict[str, Any]
    webhooks: list[Webhook]
    metadata: dict[str, Any]
    seed: int
    queue: str
    priority: int
    progress: Progress
    error: JobError | None
    latest_metrics: dict[str, float]
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class EventOut(BaseModel):
    id: int = Field(description="Increases by one per event of the job; pass it as `after` or Last-Event-ID.")
    created_at: datetime
    level: str
    type: str = Field(
        examples=["step"],
        description="running; preparing (targets and avoid datasets: the base model drawing each pair's "
        "missing image, data ready/total/generated/reused); started, step, checkpoint, sample, evaluation, "
        "artifact, finished; then succeeded, failed, cancelled or requeued.",
    )
    message: str
    data: dict[str, Any]


class MetricSeries(BaseModel):
    steps: list[int]
    values: list[float]


class MetricsOut(BaseModel):
    series: dict[str, MetricSeries] = Field(description="One series per metric name, steps ascending.")


class CheckpointOut(BaseModel):
    step: int
    metrics: dict[str, float]
    created_at: datetime


class SampleOut(BaseModel):
    id: int
    step: int = Field(description="Optimizer step; 0 holds the base model's images.")
    index: int = Field(description="Position of the prompt in validation.prompts.")
    prompt: str
    with_lora: bool
    url: str = Field(description="Download URL of the image (same auth).")
    created_at: datetime


class HealthOut(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyOut(BaseModel):
    status: Literal["ok"] = "ok"
    checks: dict[str, str]


class WebhookSecretOut(BaseModel):
    secret: str = Field(
        description="Signs every webhook of your jobs: `whsec_` + base64 of the HMAC-SHA256 key.",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )
    created_at: datetime
    previous_secret_expires_at: datetime | None = Field(
        description="Until then deliveries also carry a signature by the secret this one replaced."
    )


class WebhookAttemptOut(BaseModel):
    number: int = Field(description="1 for the first attempt.")
    started_at: datetime
    duration_ms: float
    response_status: int | None = Field(description="The receiver's HTTP status; None if it never answered.")
    error: str | None = Field(description="Why the attempt failed, if it did.")


class WebhookDeliveryOut(BaseModel):
    id: str = Field(
        description="The `webhook-id` header: the same on every attempt.", examples=["msg_0643f1c2a0b1d2"]
    )
    event: WebhookEvent
    url: str
    status: DeliveryStatus = Field(
        description="pending until the receiver answers 2xx (succeeded) or the attempts run out (failed)."
    )
    next_attempt_at: datetime | None = Field(description="When a pending delivery is tried next.")
    created_at: datetime
    finished_at: datetime | None
    attempts: list[WebhookAttemptOut]


WorkerStatus = Literal["online", "offline", "stopped"]


class WorkerOut(BaseModel):
    """A worker process and what it trains with. Workers are shared by every tenant."""

    id: str = Field(
        description="Its Celery node name; a job's `running` events name the worker that picked it up.",
        examples=["gpu1@h1"],
    )
    hostname: str
    queues: list[str] = Field(description="Training queues it consumes; route a job with its `queue`.")
    device: Literal["cpu", "cuda"]
    gpu_model: str | None = Field(examples=["NVIDIA H100 80GB HBM3"])
    gpu_memory_mb: int | None = Field(description="Memory of each GPU in MiB.")
    gpu_count: int
    version: str = Field(description="mapo-service version it runs.")
    status: WorkerStatus = Field(
        description="online: heard from within the heartbeat timeout; offline: not heard from since (lost, "
        "cut off or killed); stopped: shut down cleanly."
    )
    started_at: datetime
    last_seen_at: datetime


class BaseModelOut(BaseModel):
    """A base model this server trains on, as its operator configured it (MAPO_BASE_MODELS)."""

    name: str = Field(description="What a job's `base_model` names.", examples=["shapes-flux"])
    family: FamilyName | None = Field(
        description="sd (1.x/2.x), sdxl, sd3 (SD3/SD3.5) or flux (FLUX.1), read from the model's "
        "model_index.json; null where the API cannot read it (a hub id not in this host's cache): the "
        "worker then checks the job's fields when it loads the model."
    )
    objective: Objective | None = Field(
        description="noise_prediction (the UNet families) or flow_matching (SD3, FLUX)."
    )
    prediction_type: str | None = Field(description="epsilon, v_prediction or flow (velocity).")
    native_resolution: int | None = Field(description="The square size it was trained at; a job's default.")
    methods: list[Method] = Field(description="Training methods it accepts.")
    fields: list[str] = Field(
        description="Family-specific hyperparameters it accepts besides the common ones (a job that sets "
        "one it does not accept is a 422 naming the field)."
    )


class RecipeOut(BaseModel):
    """The settings that decide a job's memory, as the plan would run them (`auto` resolved)."""

    base_precision: str = Field(description="fp32, bf16, fp16, int8, nf4 or fp8.")
    text_encoder_precision: str
    gradient_checkpointing: bool
    cache_latents: bool = Field(description="Whether the text encoders are freed after encoding the cache.")
    train_batch_size: int
    resolution: int


class MemoryOut(BaseModel):
    """Estimated bytes per device; the peak is that of the step or of loading, whichever is larger."""

    peak_device_bytes: int = Field(description="GPU memory (on a CPU worker: its RAM, as peak_host_bytes).")
    peak_host_bytes: int = Field(description="Host RAM of the training process.")
    denoiser_bytes: int
    text_encoders_bytes: int
    vae_bytes: int
    lora_training_state_bytes: int = Field(description="LoRA weights, gradients and AdamW's moments.")
    activations_bytes: int
    runtime_bytes: int = Field(description="The CUDA context and allocator slack, or the Python runtime.")


class DeviceEstimateOut(BaseModel):
    """The plan on one class of the registered workers' devices."""

    device_class: str = Field(examples=["H100"], description="The GPU (or cpu) class; prices are per class.")
    device: Literal["cpu", "cuda"]
    gpu_memory_mb: int | None = Field(description="Memory of each device in MiB, as the workers advertise.")
    recipe: RecipeOut
    memory: MemoryOut
    fits: bool | None = Field(description="Whether the peak fits the device; null: memory unknown.")
    step_seconds: float | None = Field(description="One optimizer step; null for a class of unknown speed.")
    total_seconds: float | None = Field(description="max_train_steps steps.")
    gpu_hour_price: float | None = Field(description="Price per device-hour (MAPO_GPU_HOUR_PRICES).")
    cost: float | None = Field(description="total time x gpus x price; null without a price or a time.")
    workers: list[str] = Field(description="Ids of the workers of this class that could take the job.")


class EstimateOut(BaseModel):
    """What a job would take before it runs: the recipe, memory, time and cost per device class, and which
    registered workers could take it (serve its queue, have its `gpus`, and fit its peak or advertise no
    memory)."""

    recipe: RecipeOut = Field(description="On the fastest class that can take it, else a GPU of any size.")
    memory: MemoryOut
    devices: list[DeviceEstimateOut] = Field(description="One entry per class of the registered workers.")
    workers: list[str] = Field(description="Every worker that could take the job.")
    smallest_recipe: RecipeOut = Field(description="Least memory: nf4 base and text encoders, checkpointing.")
    smallest_memory: MemoryOut

"""The one Settings object (environment variables prefixed `MAPO_`), with embedded single-machine defaults.

Outside `development` the defaults that are only safe on a laptop (the published API-key pepper) are refused,
so a production deployment cannot start with them by accident.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEV_PEPPER = "mapo-development-pepper-not-secret"
DEFAULT_QUEUE = "mapo.gpu"
QUEUE_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
Environment = Literal["development", "test", "production"]


class Settings(BaseSettings):
    """Configuration of the API and the worker. Every path defaults to a place under `data_dir`."""

    model_config = SettingsConfigDict(env_prefix="MAPO_", env_nested_delimiter="__", extra="ignore")

    environment: Environment = Field(
        default="development", description="`development` allows the embedded defaults; others refuse them."
    )
    data_dir: Path = Field(default=Path("./mapo-data"), description="Root of every embedded default path.")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty means SQLite under data_dir.")
    broker_url: str = Field(
        default="filesystem://",
        description="Celery broker; `filesystem://` is kombu's embedded transport under data_dir/broker.",
    )
    result_backend: str | None = Field(default=None, description="Celery result backend; the DB holds state.")
    storage_dir: Path | None = Field(
        default=None, description="LocalStorage root; None means data_dir/storage."
    )
    storage_url: str = Field(
        default="",
        description="Where datasets and job outputs live: empty for the local directory `storage_dir`, or "
        "`s3://bucket/prefix` for an S3-compatible object store (see the `s3_*` settings).",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 API endpoint (SeaweedFS, MinIO, ...); None means AWS S3."
    )
    s3_public_endpoint_url: str | None = Field(
        default=None,
        description="Where clients reach the object store, when not at `s3_endpoint_url` (e.g. the API "
        "and workers use an internal address): presigned download URLs are signed for this host.",
    )
    s3_access_key_id: str | None = Field(default=None, description="S3 access key; None: boto3's own chain.")
    s3_secret_access_key: SecretStr | None = Field(default=None, description="S3 secret key.")
    s3_region: str = Field(default="us-east-1", description="S3 region (signing only, for most servers).")
    storage_presign_downloads: bool = Field(
        default=False,
        description="With object storage, file downloads answer 307 to a presigned URL of the object store "
        "instead of streaming through the API (clients must reach the store: `s3_public_endpoint_url`, else "
        "`s3_endpoint_url`).",
    )
    storage_presign_seconds: int = Field(
        default=3600, ge=1, le=7 * 86400, description="How long a presigned download URL stays valid."
    )
    worker_cache_bytes: int = Field(
        default=50 << 30,
        ge=0,
        description="With object storage, the most bytes of datasets a worker keeps in its local cache "
        "(data_dir/cache); the least recently used ones not in use are evicted beyond it.",
    )
    max_upload_bytes: int = Field(default=4 << 30, ge=1, description="Largest accepted dataset upload.")
    upload_expiry_seconds: int = Field(
        default=86400,
        ge=60,
        description="A resumable upload untouched for this long is removed with the bytes it received.",
    )
    upload_start_expiry_seconds: int = Field(
        default=600,
        ge=1,
        description="A resumable upload that has received no byte for this long after it was created is "
        "removed, and the disk it reserved freed (uploads that send nothing must not hold it for a day).",
    )
    max_reserved_upload_bytes: int = Field(
        default=8 << 30,
        ge=1,
        description="Most bytes one tenant's open resumable uploads may have reserved on the disk and not "
        "yet received (their declared lengths less what arrived); a new upload past it is refused (507).",
    )
    max_open_uploads: int = Field(
        default=8, ge=1, description="Most resumable uploads a tenant may have open (not yet a dataset)."
    )
    min_free_disk_bytes: int = Field(
        default=1 << 30,
        ge=0,
        description="A resumable upload is refused (507) if its declared length, with what open uploads "
        "still have to receive, would leave less free than this on the data directory's disk.",
    )
    max_concurrent_uploads: int = Field(
        default=4,
        ge=1,
        description="Most uploads (POST /v1/datasets, PATCH /v1/uploads/{id}) one tenant may be sending to "
        "one API process at the same time; 429 too_many_concurrent_uploads with Retry-After beyond.",
    )
    request_read_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Longest wait for the next piece of a request body: a client that sends nothing for "
        "this long is answered 408 request_timeout and its connection closed (uvicorn has no such timeout).",
    )
    max_pairs: int = Field(default=200_000, ge=1, description="Most preference pairs in one dataset.")
    max_image_bytes: int = Field(default=20 << 20, ge=1, description="Largest encoded image file in bytes.")
    max_image_pixels: int = Field(default=4096 * 4096, ge=1, description="Largest decoded image (w * h).")
    base_models: dict[str, str] = Field(
        default_factory=dict,
        description="Base-model names a job may ask for, mapped to a local diffusers folder or hub id.",
    )
    gpu_hour_prices: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        description="Price of one device-hour per device class, as POST /v1/jobs/estimate names the "
        'classes (H100, A100, L4, RTX 4090, ..., cpu), e.g. {"H100": 2.5, "L4": 0.8}: an estimate\'s cost '
        "is its total time x gpus x this price; a class without a price gets no cost.",
    )
    api_key_pepper: SecretStr = Field(
        default=SecretStr(DEV_PEPPER), description="Secret mixed into every stored API-key hash."
    )
    auth_cache_seconds: float = Field(
        default=10.0,
        ge=0,
        description="How long an API process trusts an API key it has checked: a revoked key still works "
        "for at most this long on each API process. 0 checks the database on every request.",
    )
    database_pool_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=120,
        description="How long a request waits for a pooled database connection before the API answers 503 "
        "database_busy with Retry-After (a burst beyond the pool is told to come back, never left waiting).",
    )
    sse_poll_seconds: float = Field(default=0.5, gt=0, description="How often an event stream polls the DB.")
    heartbeat_timeout_seconds: float = Field(
        default=120.0, gt=0, description="A running job whose heartbeat is older than this is requeued."
    )
    reconcile_interval_seconds: float = Field(
        default=30.0, gt=0, description="How often each worker looks for jobs whose worker died."
    )
    max_worker_losses: int = Field(
        default=3,
        ge=1,
        le=100,
        description="How many times a job's training process may die (killed, out of memory, a crash, its "
        "worker lost) before the job fails with worker_lost_repeatedly instead of being requeued again.",
    )
    broker_timeout_seconds: float = Field(default=2.0, gt=0, description="Readiness probe broker timeout.")
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, description="How long a webhook receiver has to answer one attempt."
    )
    webhook_max_attempts: int = Field(
        default=10, ge=1, le=50, description="Attempts per webhook delivery before it is marked failed."
    )
    webhook_backoff_seconds: float = Field(
        default=10.0, gt=0, description="Wait before a webhook's second attempt; doubles each attempt."
    )
    webhook_max_backoff_seconds: float = Field(
        default=3600.0,
        gt=0,
        le=6 * 3600,
        description="Longest wait between two attempts of a webhook delivery (at most 6 hours).",
    )
    webhook_secret_grace_seconds: float = Field(
        default=86400.0, ge=0, description="How long a rotated-out webhook secret still signs deliveries."
    )
    webhook_sender: bool = Field(
        default=True,
        description="Each GPU worker starts a webhook sender (a Celery worker on the webhook queue) beside "
        "it; turn off where you run `celery -A worker.webhooks.app worker` yourself.",
    )
    webhook_sender_concurrency: int = Field(
        default=4, ge=1, le=64, description="Webhook deliveries one sender makes at the same time."
    )
    worker_gpus: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Devices a GPU worker may give one job (a job's `gpus` up to this many); None counts "
        "the CUDA devices it sees (1 without CUDA). Without CUDA a larger number runs that many CPU "
        "processes over gloo, which is what the tests do.",
    )
    queues: Annotated[list[str], NoDecode] = Field(
        default=[DEFAULT_QUEUE],
        min_length=1,
        description="Training queues a job may name (comma-separated, e.g. `mapo.gpu,mapo.gpu.h100`: one "
        "per GPU class); the first is where a job without `queue` goes.",
    )
    worker_queues: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Training queues this worker consumes (comma-separated) when started without `-Q`; "
        "empty means the first of `queues`.",
    )

    @field_validator("queues", "worker_queues", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            value = [name.strip() for name in value.split(",") if name.strip()]
        if isinstance(value, list):
            bad = [name for name in value if not isinstance(name, str) or not QUEUE_NAME.fullmatch(name)]
            if bad:
                raise ValueError(f"queue names are letters, digits, '.', '-' and '_': {bad}")
        return value

    @model_validator(mode="after")
    def _refuse_unsafe_defaults(self) -> Self:
        if self.environment != "development" and self.api_key_pepper.get_secret_value() == DEV_PEPPER:
            raise ValueError(f"MAPO_API_KEY_PEPPER must be set when MAPO_ENVIRONMENT={self.environment}")
        if self.storage_url:
            parse_s3_url(self.storage_url)
        return self

    @property
    def default_queue(self) -> str:
        """Where a job that names no queue goes."""
        return self.queues[0]

    @property
    def consumed_queues(self) -> list[str]:
        """The training queues a worker started without `-Q` consumes."""
        return self.worker_queues or [self.default_queue]

    @property
    def s3_location(self) -> tuple[str, str]:
        """(bucket, key prefix) of `storage_url`; ValueError when it is not an s3:// URL."""
        return parse_s3_url(self.storage_url)

    @property
    def sqlalchemy_url(self) -> str:
        """`database_url`, or a SQLite file under data_dir when it is empty."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'mapo.db').resolve()}"

    @property
    def storage_root(self) -> Path:
        """Root directory of LocalStorage."""
        return self.storage_dir if self.storage_dir is not None else self.data_dir / "storage"

    @property
    def broker_dir(self) -> Path:
        """Folder of the embedded `filesystem://` broker (messages in and out share it on one machine)."""
        return self.data_dir / "broker"

    @property
    def cache_dir(self) -> Path:
        """A worker's cache of what it read from object storage (datasets)."""
        return self.data_dir / "cache"

    @property
    def work_dir(self) -> Path:
        """A worker's local copies of its jobs' output folders when storage is an object store."""
        return self.data_dir / "work"

    @property
    def tmp_dir(self) -> Path:
        """Scratch space for uploads in flight; on the same filesystem as storage so moves are renames."""
        return self.data_dir / "tmp"

    def ensure_dirs(self) -> None:
        """Create the folders that the embedded defaults need."""
        for folder in (
            self.data_dir,
            self.storage_root,
            self.tmp_dir,
            self.broker_dir / "processed",
            self.broker_dir / "control",
        ):
            folder.mkdir(parents=True, exist_ok=True)

    def base_model_location(self, name: str) -> str:
        """The local path or hub id behind a public base-model name; KeyError if it is not allowed."""
        return self.base_models[name]


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket[/prefix]`; a ValueError naming MAPO_STORAGE_URL otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not _BUCKET.fullmatch(parts.netloc) or parts.query or parts.fragment:
        raise ValueError(
            f"MAPO_STORAGE_URL={url!r} is not s3://bucket[/prefix] with a valid bucket name "
            "(3-63 of a-z 0-9 . -); leave it empty for the local directory MAPO_STORAGE_DIR"
        )
    prefix = parts.path.strip("/")
    if any(part in (".", "..") for part in prefix.split("/")) or "//" in prefix:
        raise ValueError(f"MAPO_STORAGE_URL={url!r}: the prefix {prefix!r} is not a clean path")
    return parts.netloc, prefix

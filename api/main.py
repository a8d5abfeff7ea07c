"""The FastAPI application: `create_app(settings)` wires settings, database, storage and the task producer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import monitoring
from api.body_limit import BodyLimitMiddleware
from api.deps import AppContext
from api.errors import install_error_handlers
from api.read_timeout import ReadTimeoutMiddleware
from api.routes import base_models, datasets, docs, health, jobs, outputs, uploads, web, webhooks, workers
from api.services import dataset_kinds
from api.services import datasets as datasets_service
from api.services.uploads import UploadStore
from api.tenant_cache import SingleFlight, TenantCache
from api.upload_slots import UploadSlots
from core.db import Database
from core.queue import make_producer
from core.settings import Settings
from core.storage import build_storage

DESCRIPTION = """Align text-to-image diffusion models with MaPO: upload preference datasets, run LoRA
training jobs, follow their events and metrics, and download adapters that load straight into diffusers.

Authenticate with `Authorization: Bearer <api key>`. Errors are `{"error": {"code", "message", "param"}}`.
Lists page with `?limit=&after=` and answer `{"data": [...], "has_more": bool}`. While the database is
down every route but `/healthz` answers 503 `database_unavailable` with `Retry-After`; retry then."""

# Multipart framing and the optional name field on top of the largest accepted upload.
BODY_OVERHEAD_BYTES = 1 << 20


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; without `settings` they are read from the environment (MAPO_*)."""
    settings = settings or Settings()
    settings.ensure_dirs()
    context = AppContext(
        settings=settings,
        database=Database(settings),
        storage=build_storage(settings),
        producer=make_producer(settings),
        tenants=TenantCache(settings.auth_cache_seconds, pepper=settings.api_key_pepper.get_secret_value()),
        key_lookups=SingleFlight(settings.api_key_pepper.get_secret_value()),
        upload_slots=UploadSlots(settings.max_concurrent_uploads),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        datasets_service.sweep_abandoned(context)
        UploadStore(settings).expire()  # resumable uploads left untouched past their expiry
        dataset_kinds.backfill_at_start(context)
        yield
        context.database.dispose()

    app = FastAPI(
        title="mapo-service",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # /docs comes from api.routes.docs, with its files served here instead of a CDN's; no /redoc.
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes + BODY_OVERHEAD_BYTES)
    app.add_middleware(ReadTimeoutMiddleware, timeout_seconds=settings.request_read_timeout_seconds)
    app.state.context = context
    install_error_handlers(app)
    monitoring.install(app, context.database)
    for module in (health, datasets, uploads, jobs, outputs, webhooks, workers, base_models):
        app.include_router(module.router)
    web.install(app)
    docs.install(app)
    return app

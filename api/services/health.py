"""Liveness and readiness: the API is ready when its database and its broker answer and its disk has
room."""

from __future__ import annotations

import shutil

from kombu.connection import Connection
from sqlalchemy import text

from api.deps import AppContext
from api.errors import Unavailable
from api.schemas import ReadyOut
from core.queue import broker_transport_options


def check_ready(context: AppContext) -> ReadyOut:
    """Probe the database and the broker; 503 naming the first that fails."""
    try:
        with context.database.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise Unavailable(f"database unreachable: {type(exc).__name__}", param="database") from None
    try:
        _ping_broker(context)
    except Exception as exc:
        raise Unavailable(f"broker unreachable: {type(exc).__name__}: {exc}", param="broker") from None
    _check_disk(context)
    return ReadyOut(checks={"database": "ok", "broker": "ok", "disk": "ok"})


def _check_disk(context: AppContext) -> None:
    """503 while the data directory's disk (or the local storage's) has less than min_free_disk_bytes
    free: uploads would be refused, so a load balancer should send them elsewhere. No figures: the probe
    needs no key."""
    settings = context.settings
    folders = [settings.tmp_dir] + ([] if settings.storage_url else [settings.storage_root])
    for folder in folders:
        if shutil.disk_usage(folder).free < settings.min_free_disk_bytes:
            raise Unavailable(
                "the data directory's disk has less than MAPO_MIN_FREE_DISK_BYTES free", param="disk"
            )


def _ping_broker(context: AppContext) -> None:
    settings = context.settings
    timeout = settings.broker_timeout_seconds
    options = {**broker_transport_options(settings), "max_retries": 0}
    # kombu's Connection.__init__ is unannotated.
    connection = Connection(  # type: ignore[no-untyped-call]
        settings.broker_url, connect_timeout=timeout, transport_options=options
    )
    with connection as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)

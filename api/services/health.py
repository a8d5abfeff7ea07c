"""Liveness and readiness: the API is ready when its database and its broker answer."""

from __future__ import annotations

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
    return ReadyOut(checks={"database": "ok", "broker": "ok"})


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

"""Typed domain errors, and the handlers that render every error as `{"error": {code, message, param}}`."""

from __future__ import annotations

import errno
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from trainer.spec import SpecConflict

log = logging.getLogger(__name__)

DATABASE_RETRY_AFTER_SECONDS = 5
DISK_FULL_RETRY_AFTER_SECONDS = 60

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "unavailable",
}


class ApiError(Exception):
    """Base of every error the API answers with on purpose; subclasses fix status and code."""

    status_code = 400
    code = "bad_request"
    # Sent with the error's answer (Retry-After, WWW-Authenticate); name, value pairs.
    headers: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param}


class Unauthenticated(ApiError):
    status_code, code = 401, "unauthenticated"
    headers = (("WWW-Authenticate", "Bearer"),)


class NotFound(ApiError):
    status_code, code = 404, "not_found"


class Conflict(ApiError):
    status_code, code = 409, "conflict"


class PayloadTooLarge(ApiError):
    status_code, code = 413, "payload_too_large"


class InvalidRequest(ApiError):
    status_code, code = 422, "invalid_request"


class Unavailable(ApiError):
    status_code, code = 503, "unavailable"


class DatasetRejected(InvalidRequest):
    """The upload failed its checks; `problems` lists each one with its row and field."""

    code = "dataset_rejected"

    def __init__(self, message: str, problems: list[dict[str, Any]]) -> None:
        super().__init__(message, param="file")
        self.problems = problems

    def body(self) -> dict[str, Any]:
        return {**super().body(), "problems": self.problems}


def error_response(
    status_code: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": jsonable_encoder(body)}, status_code=status_code, headers=headers)


def validation_param(error: dict[str, Any]) -> str | None:
    """Dotted path of the offending field: a SpecConflict names it itself, otherwise the location
    without its first part (`body`, `query`, `header`, `path`)."""
    ctx_error = error.get("ctx", {}).get("error")
    if isinstance(ctx_error, SpecConflict):
        return ctx_error.field
    parts = [str(p) for p in error.get("loc", ())[1:]]
    return ".".join(parts) or None


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.body(), dict(exc.headers) or None)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    param = validation_param(first)
    message = str(first.get("msg", "invalid request"))
    message = f"{param}: {message}" if param and not message.startswith(param) else message
    details = [{"param": validation_param(e), "message": str(e.get("msg"))} for e in exc.errors()]
    body = {"code": "invalid_request", "message": message, "param": param, "details": details}
    return error_response(422, body)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(
        exc.status_code, {"code": code, "message": str(exc.detail), "param": None}, exc.headers
    )


async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
    # The database is down or restarting: the client can retry; the pool reconnects by itself
    # (pre-ping) once it is back, so the API needs no restart.
    log.warning("database unavailable: %s", exc.__class__.__name__)
    body = {
        "code": "database_unavailable",
        "message": "the database is unavailable; retry shortly",
        "param": None,
    }
    return error_response(503, body, {"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)})


async def _database_busy(_: Request, exc: Exception) -> JSONResponse:
    # Every pooled connection stayed busy for database_pool_timeout_seconds: a burst larger than the pool.
    # Telling the client to come back keeps the wait bounded; the requests in flight finish normally.
    log.warning("database pool exhausted: %s", exc)
    body = {"code": "database_busy", "message": "the service is busy; retry shortly", "param": None}
    return error_response(503, body, {"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)})


async def _unstorable_value(_: Request, exc: Exception) -> JSONResponse:
    # The database refused a value the request carried (a NUL character in a text, a number out of range):
    # the client's input, not a fault of ours. Only the database's first line is shown, never the SQL.
    assert isinstance(exc, DataError)
    reason = str(exc.orig).splitlines()[0] if exc.orig is not None else "invalid value"
    body = {
        "code": "invalid_value",
        "message": f"a value in the request cannot be stored: {reason}",
        "param": None,
    }
    return error_response(422, body)


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


async def _os_error(request: Request, exc: Exception) -> JSONResponse:
    # A write that found the disk (or the quota) full: whatever the route, the client is told so and may
    # retry later; every writer cleans up after itself on the way out (scratch files, the request's
    # rollback hooks), so nothing half-written stays. No figure of the host's is given. The connection is
    # closed: the rest of an upload's body was not read.
    assert isinstance(exc, OSError)
    if exc.errno not in DISK_FULL_ERRNOS:
        return await _unexpected(request, exc)
    log.warning("a write found the disk full: %s", exc)
    body = {
        "code": "insufficient_storage",
        "message": "the server's disk is full; retry later",
        "param": None,
    }
    return error_response(
        507, body, {"Retry-After": str(DISK_FULL_RETRY_AFTER_SECONDS), "Connection": "close"}
    )


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, {"code": "internal_error", "message": "internal server error", "param": None})


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through one JSON shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # OperationalError: connection refused or cut, server shutting down; InterfaceError: a dead connection.
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(InterfaceError, _database_unavailable)
    app.add_exception_handler(PoolTimeout, _database_busy)
    app.add_exception_handler(DataError, _unstorable_value)
    app.add_exception_handler(OSError, _os_error)
    app.add_exception_handler(Exception, _unexpected)

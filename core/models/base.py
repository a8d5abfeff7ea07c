"""Declarative base, naming convention (so migrations name constraints the same on every database),
id generation and the timezone-aware UTC timestamp type."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, MetaData
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware datetimes in UTC; SQLite hands back naive values, which are UTC by construction."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """Now, timezone-aware in UTC."""
    return datetime.now(UTC)


_id_clock_lock = threading.Lock()
_id_clock_last = 0


def new_id(prefix: str) -> str:
    """`<prefix>_` + 14 hex digits of microseconds since the epoch + 10 random hex digits.

    Ids sort by creation time (strictly within a process, to the microsecond across processes), so
    "newest first" pagination can order and cursor by id alone.
    """
    global _id_clock_last
    with _id_clock_lock:
        _id_clock_last = max(time.time_ns() // 1000, _id_clock_last + 1)
        stamp = _id_clock_last
    return f"{prefix}_{stamp:014x}{os.urandom(5).hex()}"

"""What `mapo serve` prints: the supervisor's own lines, the children's output down to `--log-level`, and
one line when a job starts and when it ends.

The children (uvicorn, the Celery worker and the webhook sender the worker starts with its own log level)
each log in their own format, so their output is relayed through a filter that reads each record's level
from its first line; the lines that follow a record (a traceback, Celery's banner) share its fate.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import IO

from core.db import Database
from core.models import utcnow
from core.repositories import jobs as job_repo
from core.repositories import stats

LOG_LEVELS = ("error", "warning", "info", "debug")
DEFAULT_LOG_LEVEL = "error"
_RANKS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_RECORD_STARTS = (
    # Celery: "[2026-12-02 17:43:52,572: WARNING/MainProcess] ..."
    re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,.]+: (?P<level>[A-Z]+)/"),
    # uvicorn and the API's root logger (LOGGING_CONFIG below): "INFO:     ..."
    re.compile(r"^(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL):"),
    # Python's warnings module: "/path/platforms.py:893: SecurityWarning: ..."
    re.compile(r"^\S.*:\d+: \w*(?P<level>Warning): "),
)


def threshold(log_level: str) -> int:
    """The lowest rank of a child's record that `log_level` shows."""
    return _RANKS[log_level.upper()]


def record_level(line: str) -> int | None:
    """The rank of the record `line` starts, or None for a line that continues the previous one."""
    for pattern in _RECORD_STARTS:
        found = pattern.match(line)
        if found:
            return _RANKS.get(found.group("level").upper())
    return None


@dataclass
class LineFilter:
    """Keeps the lines of records at `minimum` or above. Lines before a child's first record count as
    errors: they are what a child prints when it cannot start (a usage error, an import traceback)."""

    minimum: int
    _current: int = _RANKS["ERROR"]

    def keep(self, line: str) -> bool:
        level = record_level(line)
        if level is not None:
            self._current = level
        return self._current >= self.minimum


def relay(stream: IO[bytes], minimum: int, write: Callable[[str], None]) -> threading.Thread:
    """Copy the lines of `stream` that pass a LineFilter to `write`, in a daemon thread, until EOF."""

    def copy() -> None:
        kept = LineFilter(minimum)
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            if kept.keep(line):
                write(line)

    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    return thread


def uvicorn_logging(log_level: str) -> dict[str, object]:
    """uvicorn's --log-config: every logger of the API process (ours too, which uvicorn's default leaves
    unformatted) as "LEVEL: [name] message" at `log_level`; one line per request only at info and below."""
    level = log_level.upper()
    access = level if threshold(log_level) <= _RANKS["INFO"] else "WARNING"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(levelname)s: [%(name)s] %(message)s"}},
        "handlers": {
            "out": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stdout"}
        },
        "root": {"handlers": ["out"], "level": level},
        "loggers": {"uvicorn.access": {"level": access}},
    }


@dataclass
class JobAnnouncer:
    """Says when a job starts and how it ends, read from the database every poll: a job first seen
    running has started; one that was queued or running and is neither any more has ended."""

    database: Database
    write: Callable[[str], None]
    _queued: set[str] = field(default_factory=set)
    _running: set[str] = field(default_factory=set)

    def poll(self) -> None:
        with self.database.sessions() as session:
            running = {job.job_id for job in stats.running_jobs(session)}
            queued = set(job_repo.queued_job_ids(session, created_before=utcnow() + timedelta(days=1)))
            ended = sorted((self._queued | self._running) - queued - running)
            endings = job_repo.endings(session, ended) if ended else {}
        for job_id in sorted(running - self._running):
            self.write(f"job {job_id} started")
        for job_id in ended:
            status, code = endings.get(job_id, ("deleted", None))
            self.write(f"job {job_id} {status}" + (f": {code}" if code else ""))
        self._queued, self._running = queued, running

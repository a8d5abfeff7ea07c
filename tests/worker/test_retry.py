"""retry_transient: database writes wait out an unreachable database, and nothing else is retried."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError, OperationalError

from worker.retry import retry_transient


class FlakyDatabase:
    """A real SQLite file whose directory appears only after `failures` connection attempts, so the
    first attempts fail with the driver's own OperationalError ("unable to open database file")."""

    def __init__(self, root: Path, failures: int) -> None:
        self.directory = root / "not-yet"
        self.engine = create_engine(f"sqlite:///{self.directory / 'jobs.db'}")
        self.failures, self.attempts = failures, 0

    def write(self) -> int:
        self.attempts += 1
        if self.attempts > self.failures:
            self.directory.mkdir(exist_ok=True)
        with self.engine.connect() as connection:
            return int(connection.execute(text("SELECT 7")).scalar_one())


def retry_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "worker.retry"]


def test_a_write_is_retried_until_the_database_answers_with_doubling_capped_delays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = FlakyDatabase(tmp_path, failures=4)
    caplog.set_level(logging.WARNING, logger="worker.retry")
    started = time.monotonic()
    result = retry_transient(
        database.write, what="job j1: recording succeeded", first_delay_seconds=0.1, max_delay_seconds=0.3
    )
    assert result == 7 and database.attempts == 5
    assert time.monotonic() - started >= 0.1 + 0.2 + 0.3 + 0.3, "it waited between attempts"
    assert retry_messages(caplog) == [
        f"job j1: recording succeeded failed (OperationalError, attempt {n}); retrying in {delay} s"
        for n, delay in [(1, "0.1"), (2, "0.2"), (3, "0.3"), (4, "0.3")]
    ]


def test_the_last_transient_error_propagates_once_the_attempts_are_spent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = FlakyDatabase(tmp_path, failures=100)
    caplog.set_level(logging.WARNING, logger="worker.retry")
    with pytest.raises(OperationalError, match="unable to open database file"):
        retry_transient(database.write, what="handing back", attempts=3, first_delay_seconds=0.01)
    assert database.attempts == 3
    assert len(retry_messages(caplog)) == 2, "no 'retrying' line after the last attempt"


def test_an_error_that_is_not_transient_propagates_at_once(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def violate_a_constraint() -> None:
        calls.append(1)
        raise IntegrityError("INSERT INTO jobs ...", {}, Exception("UNIQUE constraint failed: jobs.id"))

    caplog.set_level(logging.WARNING, logger="worker.retry")
    with pytest.raises(IntegrityError):
        retry_transient(violate_a_constraint, what="recording", first_delay_seconds=0.01)
    assert calls == [1] and retry_messages(caplog) == []

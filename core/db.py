"""Engine and session factory. The boundary (request dependency, worker) owns the transaction."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pydantic_core import from_json
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from core.settings import Settings

log = logging.getLogger(__name__)
_AFTER_COMMIT = "mapo_after_commit"
_AFTER_ROLLBACK = "mapo_after_rollback"


def make_engine(url: str, *, pool_timeout: float = 30.0) -> Engine:
    """An engine for `url`; SQLite gets WAL (readers never block the writer), foreign keys and a busy wait.

    JSON columns are parsed by pydantic-core's parser: the same values as the `json` module's, 5-15 times
    faster, which matters when a page of 50 jobs parses 250 of them (bench/api_load.py)."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_timeout=pool_timeout, json_deserializer=from_json)
    engine = create_engine(
        url, connect_args={"check_same_thread": False, "timeout": 30}, json_deserializer=from_json
    )
    event.listen(engine, "connect", _sqlite_pragmas)
    event.listen(engine, "savepoint", _sqlite_begin_before_savepoint)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin_before_savepoint(connection: Connection, _name: str) -> None:
    # pysqlite opens a transaction only before an INSERT/UPDATE/DELETE, so a SAVEPOINT that comes first
    # opens one of its own, which its RELEASE commits: a job created under `begin_nested` was visible, and
    # kept on rollback, before its request had ended. IMMEDIATE: the write lock is taken (with the busy
    # wait) now, as it would be by the INSERT that follows, never by a later write that could only fail.
    if not connection.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit, so responses can be built after the commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


class Database:
    """An engine and its session factories, built once per process from Settings."""

    def __init__(self, settings: Settings) -> None:
        self.engine = make_engine(
            settings.sqlalchemy_url, pool_timeout=settings.database_pool_timeout_seconds
        )
        self.sessions = make_session_factory(self.engine)
        # For reads that need no transaction (the API's hot reads): on the same pool, every statement
        # commits by itself, so no BEGIN or COMMIT goes to the server and ending the session sends nothing.
        # Each statement sees the rows committed when it starts; several statements may see different ones.
        autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self.read_sessions = make_session_factory(autocommit)

    @contextmanager
    def session_scope(self) -> Iterator[Session]:
        """One transaction: commit on success, roll back on any exception (the worker's boundary).
        Hooks registered with `after_commit` / `after_rollback` run once the outcome is known."""
        with self.sessions() as session:
            try:
                yield session
            except BaseException:
                rollback(session)
                raise
            commit(session)

    def dispose(self) -> None:
        """Close pooled connections (tests, shutdown, after a fork)."""
        self.engine.dispose()


def after_commit(session: Session, hook: Callable[[], None]) -> None:
    """Run `hook` once the boundary has committed this session (e.g. enqueue a task for a new row)."""
    session.info.setdefault(_AFTER_COMMIT, []).append(hook)


def after_rollback(session: Session, hook: Callable[[], None]) -> None:
    """Run `hook` if the boundary rolls back (e.g. delete files written for rows that never landed)."""
    session.info.setdefault(_AFTER_ROLLBACK, []).append(hook)


def commit(session: Session) -> None:
    """Commit, then run the after-commit hooks; if the commit fails, roll back (running those hooks)."""
    try:
        session.commit()
    except BaseException:
        rollback(session)
        raise
    session.info.pop(_AFTER_ROLLBACK, None)
    _run(session.info.pop(_AFTER_COMMIT, []))


def rollback(session: Session) -> None:
    """Roll back, then run the after-rollback hooks."""
    session.rollback()
    session.info.pop(_AFTER_COMMIT, None)
    _run(session.info.pop(_AFTER_ROLLBACK, []))


def _run(hooks: list[Callable[[], None]]) -> None:
    # The transaction's outcome is final; a failing hook is logged so the others still run.
    for hook in hooks:
        try:
            hook()
        except Exception:
            log.exception("transaction hook %r failed", hook)

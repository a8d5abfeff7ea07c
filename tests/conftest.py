"""Shared fixtures: migrated databases (SQLite always, and PostgreSQL: the server at MAPO_TEST_POSTGRES_URL
or, without it, a throwaway one of the session's own, as for Redis: tests/support/session_servers.py),
per-test Settings under tmp_path (local storage, or a prefix of its own in a SeaweedFS bucket for tests
marked `BOTH_STORAGE_BACKENDS`), the app and its client, the tiny models, and the worker's context and
jobs on a real dataset (worker and fault tests). Plain helpers (the `create_*` factories, servers,
builders) live in tests/support."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, delete, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

import migrations
from core.db import Database
from core.models import Base, Job
from core.settings import Settings
from core.storage import Storage, build_storage
from tests.support.availability import unavailable
from tests.support.databases import REDIS_ENV, postgres_server_url
from tests.support.factories import TEST_PEPPER, create_dataset, create_job, create_tenant, store_demo_dataset
from tests.support.specs import FAST_SPEC
from tests.support.storage_backends import s3_settings
from trainer.families import FAMILIES

if TYPE_CHECKING:
    from tests.support.servers import PrivateRedis
    from worker.context import WorkerContext


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the session's throwaway servers, if it started any: this runs after every fixture's teardown
    (their databases are dropped by then), after a Ctrl-C too."""
    # Imported only by a run that used them.
    session_servers = sys.modules.get("tests.support.session_servers")
    if session_servers is not None:
        session_servers.stop_all()


@pytest.fixture
def redis_url() -> str:
    """The test Redis (MAPO_TEST_REDIS_URL, a database of its own such as redis://127.0.0.1:6379/15, or
    the session's throwaway server where it is unset), emptied of our queue."""
    import redis

    url = os.environ.get(REDIS_ENV)
    if not url:
        from tests.support import session_servers

        url = session_servers.redis_url()
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        client.ping()
    except redis.RedisError as exc:
        unavailable(f"Redis at {REDIS_ENV} is unreachable ({exc}); tests skipped")
    client.delete("mapo.gpu")  # messages a crashed earlier run may have left
    return url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, uniquely named database on the test server, migrated to head; dropped at the end."""
    server = make_url(postgres_server_url())
    name = f"mapo_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        migrations.upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite file migrated to head."""
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'mapo.db'}"
    migrations.upgrade(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test that uses the database runs once on SQLite and once on PostgreSQL."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One SeaweedFS server for the whole run; each test gets a key prefix of its own in its bucket."""
    from tests.support.servers import start_seaweedfs

    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.close()


@pytest.fixture
def storage_backend(request: pytest.FixtureRequest) -> str:
    """ "local" unless the test is parametrised by BOTH_STORAGE_BACKENDS."""
    return str(getattr(request, "param", "local"))


@pytest.fixture
def settings(tmp_path: Path, db_url: str, storage_backend: str, request: pytest.FixtureRequest) -> Settings:
    storage = s3_settings(request.getfixturevalue("seaweedfs")) if storage_backend == "s3" else {}
    return Settings(
        environment="test",
        data_dir=tmp_path / "data",
        database_url=db_url,
        api_key_pepper=TEST_PEPPER,  # type: ignore[arg-type]
        base_models={"tiny-sd": str(tmp_path / "models" / "tiny-sd")},
        sse_poll_seconds=0.05,
        **storage,
    )


@pytest.fixture
def storage(settings: Settings) -> Storage:
    """The storage `settings` configure, as the app and the worker build it."""
    return build_storage(settings)


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    """The test database; every row is deleted afterwards so tests never see each other's data."""
    db = Database(settings)
    yield db
    with db.session_scope() as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(delete(table))
    db.dispose()


@pytest.fixture
def session(database: Database) -> Iterator[Session]:
    """A session for arranging and inspecting data; tests commit what the app must see."""
    with database.sessions() as s:
        yield s


@pytest.fixture
def client(settings: Settings, database: Database) -> Iterator[TestClient]:
    from api.main import create_app

    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The session's tiny random pipeline of a family, built on first use."""
    built: dict[str, Path] = {}

    def tiny_model_of(family: str) -> Path:
        from trainer.synthetic.tiny import build_tiny_pipeline  # torch loads only for tests that need it

        if family not in built:
            built[family] = build_tiny_pipeline(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return built[family]

    return tiny_model_of


@pytest.fixture(scope="session", params=sorted(FAMILIES))
def family_name(request: pytest.FixtureRequest) -> str:
    """Every family by name: a test that takes it (or `tiny_model`) runs once per family."""
    name: str = request.param
    return name


@pytest.fixture(scope="session")
def tiny_model(tiny_models: Callable[[str], Path], family_name: str) -> Path:
    """The tiny random pipeline of each family in turn (see `family_name`)."""
    return tiny_models(family_name)


@pytest.fixture(scope="session")
def tiny_sd(tiny_models: Callable[[str], Path]) -> Path:
    return tiny_models("sd")


@pytest.fixture(scope="session")
def tiny_sdxl(tiny_models: Callable[[str], Path]) -> Path:
    return tiny_models("sdxl")


@pytest.fixture(scope="session")
def tiny_sd3(tiny_models: Callable[[str], Path]) -> Path:
    return tiny_models("sd3")


@pytest.fixture(scope="session")
def tiny_flux(tiny_models: Callable[[str], Path]) -> Path:
    return tiny_models("flux")


@pytest.fixture
def worker_settings(settings: Settings, tiny_sd: Path) -> Settings:
    return settings.model_copy(update={"base_models": {"tiny-sd": str(tiny_sd)}})


@pytest.fixture
def ctx(worker_settings: Settings, database: Database) -> WorkerContext:
    from worker.context import WorkerContext  # imports Celery: loaded by the tests that use it

    worker_settings.ensure_dirs()
    return WorkerContext(worker_settings, database, build_storage(worker_settings), "test-host:1")


@pytest.fixture
def make_job(session: Session, ctx: WorkerContext, tmp_path: Path) -> Callable[..., Job]:
    """A committed queued job on a real 6-pair demo dataset; spec overrides merge into FAST_SPEC."""

    def make(**spec_overrides: Any) -> Job:
        tenant = create_tenant(session)
        dataset = create_dataset(session, tenant_id=tenant.id, num_pairs=6)
        store_demo_dataset(ctx.storage, dataset.storage_key, tmp_path, num_pairs=6, resolution=32)
        spec = {**FAST_SPEC, **spec_overrides}
        job = create_job(
            session,
            tenant_id=tenant.id,
            dataset_id=dataset.id,
            spec=spec,
        )
        session.commit()
        return job

    return make


@pytest.fixture
def redis_broker(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis of its own: the shared test Redis's queues are consumed by other people's workers."""
    from tests.support.servers import PrivateRedis

    server = PrivateRedis(tmp_path / "redis")
    yield server
    server.close()

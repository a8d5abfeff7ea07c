"""Shared fixtures: migrated databases (SQLite always, and PostgreSQL: the server at MAPO_TEST_POSTGRES_URL
or, without it, a throwaway one of the session's own, as for Redis: tests/session_servers.py), per-test
Settings under tmp_path (local storage, or a prefix of its own in a SeaweedFS bucket for tests marked
`BOTH_STORAGE_BACKENDS`), the app and its client, and `create_*` factory functions."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, delete, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

import migrations
from core.db import Database
from core.models import ApiKey, Base, Dataset, Job, Tenant
from core.repositories import tenants as tenant_repo
from core.settings import Settings
from core.storage import Storage, build_storage, dataset_key
from tests.support.availability import unavailable

TEST_PEPPER = "test-pepper"
POSTGRES_ENV = "MAPO_TEST_POSTGRES_URL"
REDIS_ENV = "MAPO_TEST_REDIS_URL"


def _postgres_server_url() -> str:
    """MAPO_TEST_POSTGRES_URL's server (CI's), or the session's throwaway one where it is unset."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        from tests import session_servers

        url = session_servers.postgres_url()
    try:
        with create_engine(url).connect():
            pass
    except Exception as exc:
        unavailable(f"PostgreSQL at {POSTGRES_ENV} is unreachable ({type(exc).__name__}); tests skipped")
    return url


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the session's throwaway servers, if it started any: this runs after every fixture's teardown
    (their databases are dropped by then), after a Ctrl-C too."""
    session_servers = sys.modules.get("tests.session_servers")  # imported only by a run that used them
    if session_servers is not None:
        session_servers.stop_all()


@pytest.fixture
def redis_url() -> str:
    """The test Redis (MAPO_TEST_REDIS_URL, a database of its own such as redis://127.0.0.1:6379/15, or
    the session's throwaway server where it is unset), emptied of our queue."""
    import redis

    url = os.environ.get(REDIS_ENV)
    if not url:
        from tests import session_servers

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
    server = make_url(_postgres_server_url())
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


# A test (or module, as `pytestmark`) marked with this runs once on each storage backend.
BOTH_STORAGE_BACKENDS = pytest.mark.parametrize(
    "storage_backend", ["local", pytest.param("s3", marks=pytest.mark.s3)], indirect=True
)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One SeaweedFS server for the whole run; each test gets a key prefix of its own in its bucket."""
    from tests.support.servers import SeaweedFS

    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.close()


@pytest.fixture
def storage_backend(request: pytest.FixtureRequest) -> str:
    """ "local" unless the test is parametrised by BOTH_STORAGE_BACKENDS."""
    return str(getattr(request, "param", "local"))


def s3_settings(server: Any) -> dict[str, Any]:
    """Settings fields that point at a fresh prefix of the test server's bucket."""
    return {
        "storage_url": f"s3://{server.BUCKET}/t-{uuid.uuid4().hex[:12]}",
        "s3_endpoint_url": server.endpoint_url,
        "s3_access_key_id": server.ACCESS_KEY,
        "s3_secret_access_key": server.SECRET_KEY,
    }


def storage_env(settings: Settings) -> dict[str, str]:
    """The MAPO_* variables that give a subprocess (a worker, a served API) the same storage."""
    env = {"MAPO_STORAGE_URL": settings.storage_url}
    if settings.storage_url:
        secret = settings.s3_secret_access_key
        env |= {
            "MAPO_S3_ENDPOINT_URL": settings.s3_endpoint_url or "",
            "MAPO_S3_ACCESS_KEY_ID": settings.s3_access_key_id or "",
            "MAPO_S3_SECRET_ACCESS_KEY": secret.get_secret_value() if secret else "",
        }
    return env


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
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainer.synthetic.tiny import build_tiny_pipeline  # torch loads only for tests that need a model

    return build_tiny_pipeline("sd", tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainer.synthetic.tiny import build_tiny_pipeline  # torch loads only for tests that need a model

    return build_tiny_pipeline("sdxl", tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainer.synthetic.tiny import build_tiny_pipeline  # torch loads only for tests that need a model

    return build_tiny_pipeline("sd3", tmp_path_factory.mktemp("tiny-sd3"))


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainer.synthetic.tiny import build_tiny_pipeline  # torch loads only for tests that need a model

    return build_tiny_pipeline("flux", tmp_path_factory.mktemp("tiny-flux"))


def create_tenant(session: Session, **overrides: Any) -> Tenant:
    return tenant_repo.create_tenant(session, overrides.pop("name", f"tenant-{uuid.uuid4().hex[:8]}"))


def create_api_key(session: Session, tenant: Tenant, *, pepper: str = TEST_PEPPER) -> tuple[ApiKey, str]:
    return tenant_repo.create_api_key(session, tenant_id=tenant.id, pepper=pepper)


def auth_headers(session: Session, tenant: Tenant | None = None) -> dict[str, str]:
    """Bearer headers of a new key (for a new tenant unless one is given); commits."""
    tenant = tenant or create_tenant(session)
    _, clear = create_api_key(session, tenant)
    session.commit()
    return {"Authorization": f"Bearer {clear}"}


def create_dataset(session: Session, **overrides: Any) -> Dataset:
    """A ready dataset row (files are the test's business)."""
    tenant_id = overrides.pop("tenant_id", None) or create_tenant(session).id
    dataset_id = overrides.pop("id", None) or f"ds_{uuid.uuid4().hex[:24]}"
    values: dict[str, Any] = {
        "name": "pairs",
        "status": "ready",
        "num_pairs": 2,
        "bytes": 10,
        "sha256": "0" * 64,
        "storage_key": dataset_key(tenant_id, dataset_id),
        "preview": [{"prompt": "a cat"}],
    }
    dataset = Dataset(id=dataset_id, tenant_id=tenant_id, **{**values, **overrides})
    session.add(dataset)
    session.flush()
    return dataset


def create_job(session: Session, **overrides: Any) -> Job:
    """A queued job on a new dataset of its tenant unless told otherwise."""
    tenant_id = overrides.pop("tenant_id", None) or create_tenant(session).id
    if "dataset_id" not in overrides:
        overrides["dataset_id"] = create_dataset(session, tenant_id=tenant_id).id
    # The spec fields the job's JSON shows at the top level: every spec the API stores has them. They may
    # be given as keywords, as the job body has them, or in `spec`.
    request = {"base_model": "tiny-sd", "method": "mapo", "validation": {}, "seed": 0}
    given = {name: overrides.pop(name) for name in request.keys() & overrides.keys()}
    overrides["spec"] = {**request, **overrides.get("spec", {"max_train_steps": 10}), **given}
    values: dict[str, Any] = {"metadata_": {}, "status": "queued", "total_steps": 10}
    job = Job(tenant_id=tenant_id, **{**values, **overrides})
    session.add(job)
    session.flush()
    return job

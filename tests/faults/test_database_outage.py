"""A real PostgreSQL restart under the API: 503 with a clear error while it is down, then recovery
without restarting the API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import migrations
from api.main import create_app
from core.db import Database
from core.settings import Settings
from tests.support.factories import TEST_PEPPER, auth_headers
from tests.support.servers import PrivatePostgres


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    yield server
    server.close()


def test_api_answers_503_while_the_database_is_down_and_recovers_by_itself(
    postgres: PrivatePostgres, tmp_path: Path
) -> None:
    migrations.upgrade(postgres.url)
    settings = Settings(
        environment="test",
        data_dir=tmp_path / "data",
        database_url=postgres.url,
        api_key_pepper=TEST_PEPPER,  # type: ignore[arg-type]
    )
    database = Database(settings)
    with database.sessions() as session:
        headers = auth_headers(session)
    database.dispose()

    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/jobs", headers=headers).status_code == 200
        postgres.stop()
        for path in ("/v1/jobs", "/v1/datasets"):
            down = client.get(path, headers=headers)
            assert down.status_code == 503, down.text
            assert down.json()["error"]["code"] == "database_unavailable"
            assert int(down.headers["Retry-After"]) > 0
        ready = client.get("/readyz")
        assert (ready.status_code, ready.json()["error"]["param"]) == (503, "database")
        assert client.get("/healthz").status_code == 200  # the process itself is alive

        postgres.start()
        assert client.get("/v1/jobs", headers=headers).status_code == 200
        assert client.get("/readyz").status_code == 200

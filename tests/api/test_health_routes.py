import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from core.db import Database
from core.settings import Settings


def test_healthz_answers_ok(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_checks_database_and_embedded_broker(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "broker": "ok", "disk": "ok"}


def test_readyz_is_503_naming_the_broker_when_it_is_unreachable(
    settings: Settings, database: Database
) -> None:
    unreachable = settings.model_copy(
        update={"broker_url": "redis://127.0.0.1:1/0", "broker_timeout_seconds": 0.5}
    )
    with TestClient(create_app(unreachable)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["param"] == "broker"


@pytest.mark.redis
def test_readyz_with_a_real_redis_broker(settings: Settings, database: Database, redis_url: str) -> None:
    redis = settings.model_copy(update={"broker_url": redis_url})
    with TestClient(create_app(redis)) as client:
        assert client.get("/readyz").status_code == 200


def test_openapi_documents_the_job_body_from_train_spec(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    hyper = schema["components"]["schemas"]["Hyperparameters"]["properties"]
    assert "Peak learning rate" in hyper["learning_rate"]["description"]
    assert "base_model" not in hyper
    assert schema["components"]["schemas"]["JobCreate"]["examples"]
    assert schema["paths"]["/v1/jobs"]["post"]["summary"]

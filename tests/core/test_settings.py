from pathlib import Path

import pytest
from pydantic import ValidationError

from core.settings import Settings


def test_embedded_defaults_live_under_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.sqlalchemy_url == f"sqlite:///{(tmp_path / 'mapo.db').resolve()}"
    assert settings.broker_url == "filesystem://"
    assert settings.storage_root == tmp_path / "storage"
    assert settings.result_backend is None


def test_ensure_dirs_creates_the_embedded_folders(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "new")
    settings.ensure_dirs()
    assert settings.storage_root.is_dir() and settings.broker_dir.is_dir() and settings.tmp_dir.is_dir()


def test_production_refuses_the_development_pepper() -> None:
    with pytest.raises(ValidationError, match="MAPO_API_KEY_PEPPER"):
        Settings(environment="production")


def test_production_accepts_a_real_pepper() -> None:
    settings = Settings(environment="production", api_key_pepper="s3cret")  # type: ignore[arg-type]
    assert settings.api_key_pepper.get_secret_value() == "s3cret"


def test_base_models_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAPO_BASE_MODELS", '{"sdxl": "stabilityai/stable-diffusion-xl-base-1.0"}')
    monkeypatch.setenv("MAPO_MAX_UPLOAD_BYTES", "1024")
    settings = Settings()
    assert settings.base_model_location("sdxl") == "stabilityai/stable-diffusion-xl-base-1.0"
    assert settings.max_upload_bytes == 1024
    with pytest.raises(KeyError):
        settings.base_model_location("unknown")


def test_queues_come_from_the_environment_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAPO_QUEUES", "mapo.gpu, mapo.gpu.h100")
    settings = Settings()
    assert settings.queues == ["mapo.gpu", "mapo.gpu.h100"]
    assert settings.default_queue == "mapo.gpu"
    assert settings.consumed_queues == ["mapo.gpu"]
    monkeypatch.setenv("MAPO_WORKER_QUEUES", "mapo.gpu.h100")
    assert Settings().consumed_queues == ["mapo.gpu.h100"]


def test_a_queue_name_with_odd_characters_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAPO_QUEUES", "mapo.gpu,bad queue")
    with pytest.raises(ValidationError, match="queue names"):
        Settings()


@pytest.mark.parametrize(
    "bad", ["http://bucket/x", "s3://", "s3://B!/x", "s3://bucket/../x", "/some/dir", "s3://ab"]
)
def test_storage_url_must_be_an_s3_url_with_a_valid_bucket(bad: str) -> None:
    with pytest.raises(ValidationError, match="MAPO_STORAGE_URL"):
        Settings(storage_url=bad)


def test_storage_url_gives_bucket_and_prefix() -> None:
    assert Settings(storage_url="s3://my-bucket/some/prefix/").s3_location == ("my-bucket", "some/prefix")
    assert Settings(storage_url="s3://my-bucket").s3_location == ("my-bucket", "")

"""Alembic migrations. `upgrade(url)` is what `mapo migrate` and the tests run."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

HERE = Path(__file__).resolve().parent


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config for this folder; without `url`, env.py takes it from core Settings."""
    config = Config(str(HERE / "alembic.ini"))
    config.set_main_option("script_location", str(HERE))
    if url is not None:
        # ConfigParser interpolation treats % specially (URL-encoded passwords contain it).
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Bring the database at `url` (default: Settings) up to `revision`."""
    command.upgrade(alembic_config(url), revision)

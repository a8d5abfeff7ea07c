"""A real API process (uvicorn, no worker) on its own migrated data dir, for the client tests."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support.api_process import served_api
from tests.support.commands import service_env
from tests.support.processes import ApiServer


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """uvicorn on a free port; its key is made with `mapo keys create` (which also migrates)."""
    root = tmp_path_factory.mktemp("api")
    env = service_env(root / "data", MAPO_BASE_MODELS=json.dumps({"tiny-sd": str(root / "no-model")}))
    with served_api(root, env) as server:
        yield server

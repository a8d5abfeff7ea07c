"""`mapo jobs create --estimate` against a real API process that offers the tiny SDXL and knows one H100
worker: it prints the plan and creates nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.db import Database
from core.repositories import workers as worker_repo
from core.settings import Settings
from tests.support.api_process import served_api
from tests.support.commands import mapo, service_env
from tests.support.factories import advertisement
from tests.support.processes import ApiServer


@pytest.fixture(scope="module")
def estimating_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """uvicorn offering a real tiny SDXL, at 2.0 per H100-hour, with one registered 8xH100 worker."""
    from trainer.synthetic.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp("api")
    model = build_tiny_pipeline("sdxl", root / "tiny-sdxl")
    env = service_env(
        root / "data",
        MAPO_BASE_MODELS=json.dumps({"tiny-sdxl": str(model)}),
        MAPO_GPU_HOUR_PRICES=json.dumps({"H100": 2.0}),
    )
    with served_api(root, env) as server:  # its key command migrates the database first
        with Database(Settings(data_dir=root / "data")).session_scope() as session:
            worker_repo.register_worker(session, advertisement("gpu1@h1", queues=["mapo.gpu"]))
        yield server


def test_jobs_create_estimate_prints_recipe_memory_time_cost_and_workers_and_creates_nothing(
    estimating_server: ApiServer, tmp_path: Path
) -> None:
    env = estimating_server.env
    demo = tmp_path / "demo.zip"
    mapo("demo-data", str(demo), "--pairs", "2", "--resolution", "16", env=env)
    dataset_id = mapo("datasets", "upload", str(demo), env=env).stdout.split()[0]
    estimated = mapo(
        *("jobs", "create", "--dataset", dataset_id, "--base-model", "tiny-sdxl", "--estimate"),
        *("--steps", "1000", "--set", "mixed_precision=bf16", "--set", "base_precision=auto"),
        env=env,
    )
    assert estimated.returncode == 0, estimated.stderr
    lines = estimated.stdout.splitlines()
    assert lines[0].startswith("recipe: base bf16, text encoders bf16, gradient checkpointing off"), lines
    assert lines[1].startswith("peak memory: device "), lines
    h100 = next(line for line in lines if line.startswith("H100 (80 GiB): fits at "))
    assert "s/step, total " in h100 and ", cost " in h100 and h100.endswith("workers: gpu1@h1"), h100
    assert lines[-1].startswith("smallest recipe: base nf4, text encoders nf4, gradient checkpointing on")
    listed = httpx.get(
        f"{estimating_server.url}/v1/jobs", headers={"Authorization": f"Bearer {estimating_server.key}"}
    )
    assert listed.json()["data"] == []

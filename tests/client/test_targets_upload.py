"""Uploading targets and avoid datasets with the SDK and the `mapo` command."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from client.sdk import MapoAPIError, MapoClient
from tests.support.commands import mapo
from tests.support.factories import create_api_key, create_tenant
from tests.support.processes import ApiServer
from trainer.synthetic.demo_data import demo_pairs


def one_sided_zip(path: Path, *, generation_prompt: str | None) -> Path:
    """Three rows of prompt and image (plus a generation prompt if given)."""
    with zipfile.ZipFile(path, "w") as archive:
        rows = []
        for index, pair in enumerate(demo_pairs(num_pairs=3, resolution=32, seed=1)):
            archive.writestr(f"img/{index}.png", pair.chosen)
            extra = {"generation_prompt": generation_prompt} if generation_prompt else {}
            rows.append({"prompt": pair.prompt, "image": f"img/{index}.png", **extra})
        archive.writestr("pairs.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_sdk_uploads_a_targets_dataset(client: TestClient, session: Session, tmp_path: Path) -> None:
    tenant = create_tenant(session)
    _, key = create_api_key(session, tenant)
    session.commit()
    sdk = MapoClient("http://testserver", key, http=client)
    upload = one_sided_zip(tmp_path / "targets.zip", generation_prompt=None)

    dataset = sdk.upload_dataset(upload, kind="targets")
    assert (dataset["kind"], dataset["num_pairs"]) == ("targets", 3)
    try:
        sdk.upload_dataset(upload, kind="avoid")
    except MapoAPIError as refused:
        assert refused.status == 422
        assert {p["field"] for p in refused.body["problems"]} == {"generation_prompt"}
    else:
        raise AssertionError("an avoid upload without generation prompts was accepted")


def test_cli_uploads_an_avoid_dataset(api_server: ApiServer, tmp_path: Path) -> None:
    upload = one_sided_zip(tmp_path / "avoid.zip", generation_prompt="a calm blue sea")
    result = mapo("datasets", "upload", str(upload), "--kind", "avoid", env=api_server.env)
    assert result.returncode == 0, result.stderr
    assert "3 pairs" in result.stdout and "avoid" in result.stdout

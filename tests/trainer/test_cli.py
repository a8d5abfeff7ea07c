"""`python -m trainer` as a user runs it: build a tiny model and demo data, train, get JSON events."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args], capture_output=True, text=True, timeout=600
    )


def test_cli_builds_demo_data_and_trains_from_a_yaml_spec(tiny_sd: Path, tmp_path: Path) -> None:
    made = _cli("make-demo-dataset", "--out", str(tmp_path / "data"), "--pairs", "6", "--resolution", "32")
    assert made.returncode == 0, made.stderr
    spec = {
        "base_model": str(tiny_sd),
        "resolution": 32,
        "train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_train_steps": 2,
        "mixed_precision": "no",
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    run = _cli(
        "train",
        "--spec",
        str(tmp_path / "spec.yaml"),
        "--dataset",
        str(tmp_path / "data"),
        "--output",
        str(tmp_path / "out"),
    )
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    # The latent cache is built first (on by default), with its progress, then training starts.
    types = [e["type"] for e in events]
    assert set(types[: types.index("started")]) == {"caching"}
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2]
    assert events[-1] == {"type": "finished", "step": 2, "total_steps": 2, "stopped": False}
    assert (tmp_path / "out" / "adapter" / "pytorch_lora_weights.safetensors").is_file()


def test_cli_rejects_a_bad_spec_naming_the_field(tmp_path: Path) -> None:
    (tmp_path / "spec.json").write_text(json.dumps({"base_model": "m", "learning_rate": -1}))
    run = _cli(
        "train",
        "--spec",
        str(tmp_path / "spec.json"),
        "--dataset",
        str(tmp_path),
        "--output",
        str(tmp_path / "out"),
    )
    assert run.returncode == 2
    assert "learning_rate" in run.stderr


def test_cli_reports_a_missing_dataset_as_a_typed_error(tiny_sd: Path, tmp_path: Path) -> None:
    (tmp_path / "spec.json").write_text(
        json.dumps({"base_model": str(tiny_sd), "resolution": 32, "mixed_precision": "no"})
    )
    run = _cli(
        "train",
        "--spec",
        str(tmp_path / "spec.json"),
        "--dataset",
        str(tmp_path / "nothing"),
        "--output",
        str(tmp_path / "out"),
    )
    assert run.returncode == 1
    error = json.loads(run.stdout.splitlines()[-1])
    assert error["type"] == "error" and error["code"] == "invalid_dataset"

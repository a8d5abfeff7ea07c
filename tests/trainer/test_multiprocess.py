"""`accelerate launch` with two CPU processes (gloo): both train, one writes; nothing in the code changes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


@pytest.mark.slow
def test_two_processes_train_data_parallel_and_emit_one_event_stream(
    tiny_sd: Path, color_pairs: Path, tmp_path: Path
) -> None:
    spec = {
        "base_model": str(tiny_sd),
        "resolution": 32,
        "train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_train_steps": 4,
        "checkpoint_every_n_steps": 2,
        "mixed_precision": "no",
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "trainer",
        "train",
        "--spec",
        str(tmp_path / "spec.yaml"),
        "--dataset",
        str(color_pairs),
        "--output",
        str(tmp_path / "out"),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert [e["type"] for e in events].count("started") == 1, "only the main process reports"
    started = events[0]
    assert started["num_train_pairs"] == 8
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2, 3, 4]
    assert events[-1] == {"type": "finished", "step": 4, "total_steps": 4, "stopped": False}
    assert sorted(p.name for p in (tmp_path / "out" / "adapter").iterdir()) == [
        "lora_kohya.safetensors",
        "pytorch_lora_weights.safetensors",
    ]

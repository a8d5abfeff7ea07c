"""How a rank of a data-parallel run hands its typed error to the launcher: in a file of its own, and as one
whole JSON line on the stdout that all ranks share. Two ranks failing at the same moment once interleaved
their `print()`ed error lines (torchrun starts ranks under `python -u`, where print writes the text and the
newline apart) into one unreadable line, and the run failed as `rank_failed` instead of with their code."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.specs import tiny_spec
from trainer.cli import report_training_error
from trainer.errors import CheckpointError, InvalidDatasetError
from trainer.launch import RANK_ERRORS_ENV, first_rank_error, record_rank_error


class RecordedWrites(io.RawIOBase):
    """The bytes of each write that reaches the OS, as an unbuffered stdout (`python -u`) makes them."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes.append(bytes(data))
        return len(data)


def test_the_error_line_reaches_the_pipe_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RANK_ERRORS_ENV, raising=False)
    raw = RecordedWrites()
    # Text straight over the raw stream, as `python -u` sets up sys.stdout (no buffer to merge writes).
    unbuffered = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)  # type: ignore[type-var]
    report_training_error(InvalidDatasetError("no manifest.json " + "x" * 2000), unbuffered)
    [write] = raw.writes  # one write of at most PIPE_BUF bytes is never interleaved with another's
    line = json.loads(write.decode())
    assert write.endswith(b"\n") and line["type"] == "error" and line["code"] == "invalid_dataset"


def test_the_earliest_recorded_error_of_the_ranks_is_the_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RANK_ERRORS_ENV, str(tmp_path))
    assert first_rank_error(tmp_path) is None
    record_rank_error(CheckpointError("disk full"))
    (tmp_path / "4242.json").write_text(
        json.dumps({"code": "invalid_dataset", "message": "later", "at": 4e9}), encoding="utf-8"
    )
    (tmp_path / "4243.partial").write_text('{"code": "torn', encoding="utf-8")  # a rank killed mid-write
    assert first_rank_error(tmp_path) == ("checkpoint_failed", "disk full")


def test_a_rank_leaves_its_typed_error_in_the_launchers_folder(tiny_sd: Path, tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(tiny_spec(tiny_sd).model_dump_json(), encoding="utf-8")
    errors = tmp_path / "rank-errors"
    errors.mkdir()
    command = [sys.executable, "-u", "-m", "trainer", "train", "--spec", str(spec_file)]
    command += ["--dataset", str(tmp_path / "no-such-dataset"), "--output", str(tmp_path / "out")]
    env = {**os.environ, RANK_ERRORS_ENV: str(errors)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    recorded = first_rank_error(errors)
    assert recorded is not None and recorded[0] == "invalid_dataset"
    assert json.loads(done.stdout.splitlines()[-1])["code"] == "invalid_dataset", "scripts still read stdout"

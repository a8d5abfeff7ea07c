"""Resumable checkpoints under <output_dir>/checkpoints/step-NNNNNN, written so a reader never sees half.

A checkpoint is built in a hidden temporary folder, its files fsynced, `state.json` written last, and only
then renamed into place; a crash leaves at most a `.tmp-*` folder, which the next run deletes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from trainer.errors import CheckpointError

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "state.json"
PREFIX = "step-"


def checkpoints_root(output_dir: Path) -> Path:
    return output_dir / CHECKPOINTS_DIR


def complete_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if path.name.startswith(PREFIX) and (path / STATE_FILE).is_file():
            found.append((int(path.name.removeprefix(PREFIX)), path))
    return sorted(found)


def latest_checkpoint(output_dir: Path) -> tuple[int, Path] | None:
    complete = complete_checkpoints(output_dir)
    return complete[-1] if complete else None


def remove_incomplete(output_dir: Path) -> None:
    root = checkpoints_root(output_dir)
    if root.is_dir():
        for path in root.glob(".tmp-*"):
            shutil.rmtree(path, ignore_errors=True)


def begin_checkpoint(output_dir: Path, step: int) -> Path:
    """An empty temporary folder for the checkpoint of `step` (main process only)."""
    tmp = temporary_folder(output_dir, step)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise CheckpointError(f"creating the checkpoint folder of step {step} failed: {exc}") from exc
    return tmp


def publish_checkpoint(output_dir: Path, step: int, *, state: dict[str, Any], keep: int) -> Path:
    """Seal the filled temporary folder (state.json last, fsync), rename it to step-N, drop old ones."""
    root = checkpoints_root(output_dir)
    final = root / f"{PREFIX}{step:06d}"
    tmp = temporary_folder(output_dir, step)
    try:
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state}), encoding="utf-8")
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"saving the checkpoint of step {step} failed: {exc}") from exc
    _rotate(output_dir, keep)
    return final


def temporary_folder(output_dir: Path, step: int) -> Path:
    """Where the checkpoint of `step` is assembled before `publish_checkpoint` renames it."""
    return checkpoints_root(output_dir) / f".tmp-{PREFIX}{step:06d}"


def _rotate(output_dir: Path, keep: int) -> None:
    for _, path in complete_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    for directory in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

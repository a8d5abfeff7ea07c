"""The `mapo` and `mapo-ops` commands, run from the repository root as a user or an operator runs them,
and the environment they and the services the tests start get."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def service_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Our environment without any MAPO_ setting of the developer's, plus `data_dir` and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAPO_")}
    return {**env, "MAPO_DATA_DIR": str(data_dir), "COLUMNS": "200", **extra}


def mapo(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `python -m client ARGS` from the repository root, as a user would run `mapo ARGS`."""
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def mapo_ops(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `python -m ops ARGS` from the repository root, as an operator would run `mapo-ops ARGS`."""
    return subprocess.run(
        [sys.executable, "-m", "ops", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )

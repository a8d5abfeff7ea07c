"""The `mapo-ops` command runner."""

from __future__ import annotations

import subprocess
import sys

from tests.client.conftest import REPO_ROOT


def mapo_ops(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m ops ARGS` from the repository root, as an operator would run `mapo-ops ARGS`."""
    return subprocess.run(
        [sys.executable, "-m", "ops", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )

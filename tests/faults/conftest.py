"""Fixtures of the fault tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.disks import mounted_small_disks


@pytest.fixture
def mount_small_disk() -> Iterator[Callable[[Path], None]]:
    """Mount a real 64 MiB filesystem (tmpfs) on a folder, for a test to fill; unmounted afterwards."""
    yield from mounted_small_disks()

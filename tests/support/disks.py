"""A real, small filesystem to fill up: the disk-full fault tests' tmpfs, and filling it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.support.availability import unavailable

DISK_BYTES = 64 << 20


def mounted_small_disks() -> Iterator[Callable[[Path], None]]:
    """Mount a real 64 MiB filesystem (tmpfs) on a folder, for a test to fill; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(folder)], capture_output=True
        )
        if done.returncode != 0:
            unavailable(
                f"cannot mount a tmpfs to fill ({done.stderr.decode().strip()}); disk-full test skipped"
            )
        mounted.append(folder)

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(disk: Path) -> Path:
    """Write until the filesystem is full; returns the filler file (delete it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY)
    try:
        for block in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * block)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler

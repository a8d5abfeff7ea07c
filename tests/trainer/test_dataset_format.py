"""The canonical layout's writer: images given as files are linked in where possible, copied elsewhere."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from trainer.dataset_format import EncodedImage, store_image

SHM = Path("/dev/shm")


def test_an_image_file_on_the_same_filesystem_is_linked_not_copied(tmp_path: Path) -> None:
    source = tmp_path / "scratch.png"
    source.write_bytes(b"\x89PNG same filesystem")
    (tmp_path / "ds" / "images").mkdir(parents=True)

    relative = store_image(tmp_path / "ds", 3, "chosen", EncodedImage(source, ".png"))

    assert relative == "images/000003_chosen.png"
    assert (tmp_path / "ds" / relative).stat().st_ino == source.stat().st_ino
    source.unlink()  # the upload's scratch copy goes; the dataset keeps the image
    assert (tmp_path / "ds" / relative).read_bytes() == b"\x89PNG same filesystem"


@pytest.mark.skipif(
    not SHM.is_dir() or SHM.stat().st_dev == Path(tempfile.gettempdir()).stat().st_dev,
    reason="needs /dev/shm on a filesystem other than the temp dir's",
)
def test_an_image_file_on_another_filesystem_is_copied(tmp_path: Path) -> None:
    fd, name = tempfile.mkstemp(dir=SHM)
    os.write(fd, b"\x89PNG other filesystem")
    os.close(fd)
    (tmp_path / "ds" / "images").mkdir(parents=True)
    try:
        relative = store_image(tmp_path / "ds", 0, "rejected", EncodedImage(Path(name), ".png"))
    finally:
        os.unlink(name)
    assert (tmp_path / "ds" / relative).read_bytes() == b"\x89PNG other filesystem"

"""Tiny models and datasets shared by the trainer tests, built once per session, entirely offline."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from trainer.dataset_format import DatasetWriter, EncodedImage


def _png(color: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def color_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight pairs: a warm chosen image beside a cool rejected one, non-square to exercise the crop."""
    root = tmp_path_factory.mktemp("color-pairs")
    with DatasetWriter(root) as writer:
        for i in range(8):
            writer.add_pair(
                f"a shape number {i}",
                chosen=EncodedImage(_png((200, 60 + 10 * i, 30), (80, 64))),
                rejected=EncodedImage(_png((30, 60 + 10 * i, 200), (80, 64))),
            )
    return root

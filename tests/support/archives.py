"""Builders for what a dataset upload holds: PNG images, JSON-lines manifests, and zip, tar(.gz) and
parquet archives of them, built in memory or in a test's tmp_path."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

WARM = (220, 60, 40)
COOL = (40, 80, 220)

# The parquet uploads' columns: Pick-a-Pic pairs, targets rows, and targets rows with the generation prompt
# (which avoid rows require).
PICK_SCHEMA = pa.schema(
    [
        ("caption", pa.string()),
        ("jpg_0", pa.binary()),
        ("jpg_1", pa.binary()),
        ("label_0", pa.float64()),
        ("label_1", pa.float64()),
    ]
)
TARGETS_SCHEMA = pa.schema([("prompt", pa.string()), ("image", pa.binary())])
TARGETS_GENERATION_SCHEMA = TARGETS_SCHEMA.append(pa.field("generation_prompt", pa.string()))


def png(colour: tuple[int, int, int] = WARM, size: tuple[int, int] = (16, 16)) -> bytes:
    """A PNG of one colour (16×16 unless told)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def is_warm(path: Path) -> bool:
    """Whether the image at `path` is more red than blue (a WARM image rather than a COOL one)."""
    with Image.open(path) as image:
        red, _, blue = (sum(band.getdata()) for band in image.convert("RGB").split())
    return red > blue


def jsonl(rows: Sequence[Mapping[str, object]]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def pair_row(index: int, prompt: str = "a red circle") -> dict[str, object]:
    return {"prompt": prompt, "chosen": f"images/{index}_w.png", "rejected": f"images/{index}_c.png"}


def valid_files(count: int = 2) -> dict[str, bytes]:
    """The files of a valid pairs upload of `count` rows: pairs.jsonl, a WARM chosen and a COOL rejected image
    per row."""
    files = {"pairs.jsonl": jsonl([pair_row(i) for i in range(count)])}
    for i in range(count):
        files[f"images/{i}_w.png"], files[f"images/{i}_c.png"] = png(WARM), png(COOL)
    return files


def target_files(count: int, **extra: object) -> dict[str, bytes]:
    """The files of a targets upload of `count` rows (one WARM image each); `extra` goes into every row."""
    rows = [{"prompt": f"a warm shape {i}", "image": f"want/{i}.png", **extra} for i in range(count)]
    files = {"pairs.jsonl": jsonl(rows)}
    files |= {f"want/{i}.png": png(WARM) for i in range(count)}
    return files


def zip_bytes(files: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    """A zip of `files` (member name to bytes) in memory, for an upload through the API."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    path.write_bytes(zip_bytes(files, zipfile.ZIP_DEFLATED))
    return path


def make_tar(path: Path, files: dict[str, bytes], extra: tuple[tarfile.TarInfo, ...] = ()) -> Path:
    """A .tar.gz of `files`, then the members `extra` describes (links, devices: no data)."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in extra:
            archive.addfile(info)
    return path


def make_parquet(path: Path, rows: list[dict[str, object]], schema: pa.Schema | None = None) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def pairs_zip(*, missing_rejected: bool = False, noise: bytes = b"") -> bytes:
    """A zip of two pairs; with `missing_rejected` the second pair names an image the archive lacks; `noise`
    is stored as a member no row references. The same arguments always give the same bytes."""
    rows = [
        {"prompt": "a red square", "chosen": "img/0c.png", "rejected": "img/0r.png"},
        {"prompt": "a blue circle", "chosen": "img/1c.png", "rejected": "img/1r.png"},
    ]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:

        def add(name: str, data: str | bytes) -> None:
            # A fixed timestamp: zip stores each member's time, and the idempotency test needs two calls
            # to give the same bytes even when they straddle a (2-second) zip time step.
            archive.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), data)

        add("pairs.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        for i, color in enumerate([(200, 0, 0), (0, 0, 200)]):
            add(f"img/{i}c.png", png(color))
            if not (missing_rejected and i == 1):
                add(f"img/{i}r.png", png((90, 90, 90)))
        if noise:
            add("extra/noise.bin", noise)
    return out.getvalue()


def targets_zip(*, generation_prompt: bool = True) -> bytes:
    """A zip of three targets rows of (prompt, image[, generation_prompt]); image i is a shade of red."""
    rows = [
        {"prompt": f"a red square {i}", "image": f"img/{i}.png"}
        | ({"generation_prompt": "a grey square"} if generation_prompt else {})
        for i in range(3)
    ]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("pairs.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        for i in range(3):
            archive.writestr(f"img/{i}.png", png((200 + i, 0, 0)))
    return out.getvalue()

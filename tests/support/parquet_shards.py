"""Builders for sharded parquet uploads: Pick-a-Pic rows, split into Hugging Face style shards
(`data/train-00000-of-00003.parquet`, ...) as the bytes of archive members."""

from __future__ import annotations

import io
import random
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from tests.support.archives import COOL, PICK_SCHEMA, WARM, png

Row = dict[str, object]


def pick_rows(count: int, *, start: int = 0) -> list[Row]:
    """`count` Pick-a-Pic rows captioned "a shape N" (N from `start`): the WARM image is preferred, and it
    sits in jpg_0 on even rows and in jpg_1 on odd ones, so only the labels tell which it is."""
    rows: list[Row] = []
    for n in range(start, start + count):
        warm, cool = png(WARM), png(COOL)
        flipped = n % 2 == 1
        rows.append(
            {
                "caption": f"a shape {n}",
                "jpg_0": cool if flipped else warm,
                "jpg_1": warm if flipped else cool,
                "label_0": 0.0 if flipped else 1.0,
                "label_1": 1.0 if flipped else 0.0,
            }
        )
    return rows


def target_rows(count: int, *, start: int = 0) -> list[Row]:
    """`count` targets rows of one WARM image each, "a warm shape N", with a generation prompt."""
    return [
        {"prompt": f"a warm shape {n}", "image": png(WARM), "generation_prompt": f"a shape {n}"}
        for n in range(start, start + count)
    ]


def parquet_bytes(
    rows: Sequence[Row],
    schema: pa.Schema = PICK_SCHEMA,
    *,
    compression: str = "snappy",
    dictionary: bool = True,
) -> bytes:
    """One parquet file of `rows`, in row groups of 16 (as `mapo demo-data` writes them)."""
    out = io.BytesIO()
    table = pa.Table.from_pylist(list(rows), schema=schema)
    pq.write_table(table, out, row_group_size=16, compression=compression, use_dictionary=dictionary)
    return out.getvalue()


def shard_name(index: int, count: int, folder: str = "data/") -> str:
    """A shard's name as Hugging Face's parquet conversion writes it."""
    return f"{folder}train-{index:05d}-of-{count:05d}.parquet"


def shard_files(
    rows: Sequence[Row], shards: int, schema: pa.Schema = PICK_SCHEMA, *, folder: str = "data/"
) -> dict[str, bytes]:
    """`rows` split into `shards` consecutive parquet shards (the last ones shorter when it does not divide),
    as archive members by name."""
    size = -(-len(rows) // shards)
    return {
        shard_name(i, shards, folder): parquet_bytes(rows[i * size : (i + 1) * size], schema)
        for i in range(shards)
    }


def noisy_png(seed: int, side: int = 48) -> bytes:
    """A PNG of noise (`side`² pixels, about 3 bytes a pixel): rows whose size is in the images, not in
    the parquet overhead, for the memory-bound test."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def uncompressed_png(side: int, colour: tuple[int, int, int] = WARM) -> bytes:
    """A flat PNG saved without compression: large as an image (3 bytes a pixel) yet tiny once a parquet
    codec compresses it, so a small shard file can hold many decoded bytes."""
    out = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(out, "PNG", compress_level=0)
    return out.getvalue()

"""The synthetic demo datasets: canonical layout, deterministic, warm chosen over cool rejected (and the
prefer-red preset of the shapes domain)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq
from PIL import Image

from trainer.dataset_format import MANIFEST_FILE, read_pairs
from trainer.synthetic.demo_data import (
    COOL_BACKGROUND,
    WARM_BACKGROUND,
    demo_pairs,
    make_demo_dataset,
    write_demo_upload,
)
from trainer.synthetic.shapes import classify


def rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def channel_sums(image: Image.Image) -> tuple[int, int, int]:
    red, green, blue = np.asarray(image, dtype=np.int64).sum(axis=(0, 1)).tolist()
    return red, green, blue


def shape_mask(image: Image.Image, background: tuple[int, int, int]) -> npt.NDArray[np.bool_]:
    """Where the image is not its background colour, i.e. where the shapes are."""
    mask: npt.NDArray[np.bool_] = (np.asarray(image) != np.array(background, dtype=np.uint8)).any(axis=-1)
    return mask


def test_demo_dataset_is_complete_in_the_canonical_layout(tmp_path: Path) -> None:
    manifest = make_demo_dataset(tmp_path / "demo", num_pairs=12, resolution=48)

    assert manifest.num_pairs == 12 and (tmp_path / "demo" / MANIFEST_FILE).is_file()
    pairs = read_pairs(tmp_path / "demo")
    assert len(pairs) == 12
    for pair in pairs:
        assert pair.prompt.endswith("flat illustration")
        for image in (rgb(tmp_path / "demo" / pair.chosen), rgb(tmp_path / "demo" / pair.rejected)):
            assert image.size == (48, 48)


def test_defaults_give_48_pairs_of_64_pixels(tmp_path: Path) -> None:
    assert make_demo_dataset(tmp_path / "demo").num_pairs == 48
    first = read_pairs(tmp_path / "demo")[0]
    assert rgb(tmp_path / "demo" / first.chosen).size == (64, 64)


def test_same_seed_gives_the_same_bytes_and_another_seed_differs() -> None:
    first = list(demo_pairs(num_pairs=8, resolution=32, seed=7))
    assert first == list(demo_pairs(num_pairs=8, resolution=32, seed=7))
    assert first != list(demo_pairs(num_pairs=8, resolution=32, seed=8))


def test_chosen_is_warm_and_rejected_is_cool_with_the_same_layout(tmp_path: Path) -> None:
    make_demo_dataset(tmp_path / "demo", num_pairs=16, resolution=32, seed=1)
    for pair in read_pairs(tmp_path / "demo"):
        chosen, rejected = rgb(tmp_path / "demo" / pair.chosen), rgb(tmp_path / "demo" / pair.rejected)
        red, _, blue = channel_sums(chosen)
        assert red > blue
        red, _, blue = channel_sums(rejected)
        assert blue > red
        chosen_shapes = shape_mask(chosen, WARM_BACKGROUND)
        assert np.array_equal(chosen_shapes, shape_mask(rejected, COOL_BACKGROUND))
        assert chosen_shapes.any()


def test_prompts_name_shapes_not_colours() -> None:
    prompts = [pair.prompt for pair in demo_pairs(num_pairs=30, resolution=16, seed=0)]
    colour_words = ("red", "orange", "yellow", "blue", "teal", "purple", "warm", "cool")
    assert not any(word in prompt.split() for prompt in prompts for word in colour_words)
    assert len(set(prompts)) > 20


def test_zip_upload_holds_a_manifest_and_its_images(tmp_path: Path) -> None:
    path = write_demo_upload(tmp_path / "demo.zip", kind="zip", num_pairs=3, resolution=16)
    with zipfile.ZipFile(path) as archive:
        rows = [json.loads(line) for line in archive.read("pairs.jsonl").splitlines()]
        names = set(archive.namelist())
    assert len(rows) == 3
    assert all(row["chosen"] in names and row["rejected"] in names for row in rows)


def test_tar_upload_is_gzipped_only_when_named_so(tmp_path: Path) -> None:
    gzipped = write_demo_upload(tmp_path / "demo.tar.gz", kind="tar", num_pairs=2, resolution=16)
    plain = write_demo_upload(tmp_path / "demo.tar", kind="tar", num_pairs=2, resolution=16)
    assert gzipped.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(gzipped.read_bytes()) == plain.read_bytes()
    with tarfile.open(plain) as archive:
        assert "pairs.jsonl" in archive.getnames()


def test_parquet_upload_alternates_sides_and_labels_follow(tmp_path: Path) -> None:
    path = write_demo_upload(tmp_path / "demo.parquet", kind="parquet", num_pairs=4, resolution=16)
    table = pq.read_table(path)
    assert table.column_names == ["caption", "jpg_0", "jpg_1", "label_0", "label_1"]
    assert table.column("label_0").to_pylist() == [1.0, 0.0, 1.0, 0.0]
    assert table.column("label_1").to_pylist() == [0.0, 1.0, 0.0, 1.0]
    originals = list(demo_pairs(num_pairs=4, resolution=16, seed=0, image_format="JPEG"))
    assert table.column("jpg_1").to_pylist()[1] == originals[1].chosen
    assert table.column("jpg_0").to_pylist()[0][:3] == b"\xff\xd8\xff"


def test_prefer_red_preset_leaves_colour_out_of_prompts_and_prefers_red(tmp_path: Path) -> None:
    """The quickstart's data: colour-less prompts, the chosen shape red, the rejected one green or blue,
    as the shapes classifier reads them back (what the shipped shapes bases learn to draw)."""
    pairs = list(demo_pairs(num_pairs=12, resolution=64, seed=0, preset="prefer-red"))
    assert len(pairs) == 12
    for pair in pairs:
        assert not any(colour in pair.prompt for colour in ("red", "green", "blue"))
        chosen, rejected = (classify(Image.open(io.BytesIO(side))) for side in (pair.chosen, pair.rejected))
        assert chosen.colour == "red" and rejected.colour in {"green", "blue"}
        assert (chosen.kind, chosen.background) == (rejected.kind, rejected.background)
    upload = write_demo_upload(
        tmp_path / "red.zip", kind="zip", num_pairs=3, resolution=32, preset="prefer-red"
    )
    with zipfile.ZipFile(upload) as archive:
        prompts = [json.loads(line)["prompt"] for line in archive.read("pairs.jsonl").splitlines()]
    assert prompts == [pair.prompt for pair in pairs[:3]]


def test_parquet_shards_split_the_parquet_upload_into_hugging_face_named_shards(tmp_path: Path) -> None:
    whole = pq.read_table(write_demo_upload(tmp_path / "demo.parquet", kind="parquet", num_pairs=10))
    path = write_demo_upload(
        tmp_path / "demo.zip", kind="zip", num_pairs=10, layout="parquet-shards", shards=3
    )
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        shards = [pq.read_table(io.BytesIO(archive.read(name))) for name in names]
    assert names == [f"data/train-{i:05d}-of-00003.parquet" for i in range(3)]
    assert [shard.num_rows for shard in shards] == [4, 4, 2]
    # The same rows, in the same order, as the one parquet file: labels alternate across shard boundaries.
    assert [row for shard in shards for row in shard.to_pylist()] == whole.to_pylist()

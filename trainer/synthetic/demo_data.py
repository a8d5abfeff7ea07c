"""Synthetic preference datasets for demos and tests, in two presets.

- "prefer-red" (the quickstart's): the shapes domain the shipped `shapes-*` bases were pre-trained on.
  Prompts leave the colour open ("a circle on a gray background"); the chosen image draws the shape red,
  the rejected one green or blue (trainer/synthetic/shape_preferences.py). A few CPU minutes of MaPO
  on a shapes base make every colour-less prompt come out red, so the alignment shows in the samples.
- "warm-cool": each pair draws the same layout of flat shapes twice: the chosen image in a warm palette
  (reds, oranges, yellows on cream), the rejected one in a cool palette (blues, teals, purples on
  grey-blue). Prompts describe only the shapes and where they are, so the preference is a style a model
  can learn, exactly like MaPO's pick-style sets. No shipped base knows these layouts, so it shows the
  plumbing, not the alignment.

Torch-free; deterministic for a seed (and a given Pillow version).
"""

from __future__ import annotations

import io
import json
import random
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from PIL import Image, ImageChops, ImageDraw

from trainer.dataset_format import DatasetWriter, EncodedImage, Manifest, read_manifest
from trainer.synthetic.shape_preferences import prefer_red_pairs
from trainer.synthetic.shapes import render

Rgb = tuple[int, int, int]
DemoPreset = Literal["prefer-red", "warm-cool"]
DEMO_PRESETS: tuple[DemoPreset, ...] = ("prefer-red", "warm-cool")
# How an archive lays the pairs out: a pairs.jsonl manifest; captioned images (the chosen images with
# same-name .txt captions, a targets upload); w/ and l/ pair folders with .txt captions beside them; or
# Pick-a-Pic parquet shards named as Hugging Face names them.
DemoLayout = Literal["manifest", "captions", "pair-folders", "parquet-shards"]
DEMO_LAYOUTS: tuple[DemoLayout, ...] = ("manifest", "captions", "pair-folders", "parquet-shards")
DEMO_SHARDS = 4

WARM_PALETTE: tuple[Rgb, ...] = ((214, 48, 39), (244, 109, 67), (253, 174, 97), (230, 171, 2))
COOL_PALETTE: tuple[Rgb, ...] = ((49, 54, 149), (69, 117, 180), (27, 158, 119), (117, 112, 179))
WARM_BACKGROUND: Rgb = (255, 236, 204)
COOL_BACKGROUND: Rgb = (214, 228, 240)

_SHAPES = ("circle", "square", "triangle", "diamond")
_SIZES = {"small": 0.12, "large": 0.22}  # radius as a fraction of the image side
_PLACES = {
    "top left": (0.28, 0.28),
    "top right": (0.72, 0.28),
    "bottom left": (0.28, 0.72),
    "bottom right": (0.72, 0.72),
    "centre": (0.5, 0.5),
}


@dataclass(frozen=True)
class _Shape:
    kind: str
    size: str
    place: str
    colour: int  # index into either palette, so both renderings colour the same shape alike


class DemoPair(NamedTuple):
    """One synthetic pair: a prompt, the encoded chosen and rejected images, and optionally a PNG mask
    (white where the preference applies)."""

    prompt: str
    chosen: bytes
    rejected: bytes
    mask: bytes | None = None


def demo_pairs(
    *,
    num_pairs: int,
    resolution: int,
    seed: int,
    image_format: Literal["PNG", "JPEG"] = "PNG",
    preset: DemoPreset = "warm-cool",
    masks: bool = False,
) -> Iterator[DemoPair]:
    """Yield `num_pairs` synthetic pairs of `resolution`² RGB images, the same ones for the same seed.

    With `masks`, every other pair (the first, the third, ...) has a mask over its shapes, so that a
    dataset shows masked and unmasked rows side by side: the preference is the shapes' colour."""
    if preset == "prefer-red":
        for index, pair in enumerate(prefer_red_pairs(num_pairs=num_pairs, seed=seed)):
            chosen, rejected = (render(side, resolution) for side in (pair.chosen, pair.rejected))
            mask = _differing(chosen, rejected) if masks and index % 2 == 0 else None
            yield DemoPair(pair.prompt, _encode(chosen, image_format), _encode(rejected, image_format), mask)
        return
    rng = random.Random(seed)
    for index in range(num_pairs):
        layout = _layout(rng)
        mask = _shapes_mask(layout, resolution) if masks and index % 2 == 0 else None
        yield DemoPair(
            prompt=_prompt(layout),
            chosen=_encode(_render(layout, WARM_PALETTE, WARM_BACKGROUND, resolution), image_format),
            rejected=_encode(_render(layout, COOL_PALETTE, COOL_BACKGROUND, resolution), image_format),
            mask=mask,
        )


def _differing(chosen: Image.Image, rejected: Image.Image) -> bytes:
    """A PNG mask, white where the two drawings differ (a prefer-red pair's shape), black elsewhere."""
    difference = ImageChops.difference(chosen.convert("RGB"), rejected.convert("RGB")).convert("L")
    return _encode(difference.point(lambda v: 255 if v else 0), "PNG")


def _shapes_mask(layout: list[_Shape], resolution: int) -> bytes:
    """A PNG mask, white over a warm-cool layout's shapes, black over its background."""
    white = ((255, 255, 255),) * len(WARM_PALETTE)
    return _encode(_render(layout, white, (0, 0, 0), resolution).convert("L"), "PNG")


def make_demo_dataset(out_dir: Path, *, num_pairs: int = 48, resolution: int = 64, seed: int = 0) -> Manifest:
    """Write a demo dataset in the canonical layout to `out_dir` and return its manifest."""
    with DatasetWriter(out_dir) as writer:
        for pair in demo_pairs(num_pairs=num_pairs, resolution=resolution, seed=seed):
            writer.add_pair(
                pair.prompt,
                chosen=EncodedImage(pair.chosen, ".png"),
                rejected=EncodedImage(pair.rejected, ".png"),
            )
    return read_manifest(out_dir)


def _layout(rng: random.Random) -> list[_Shape]:
    places = rng.sample(sorted(_PLACES), k=rng.randint(1, 3))
    return [
        _Shape(
            kind=rng.choice(_SHAPES),
            size=rng.choice(sorted(_SIZES)),
            place=place,
            colour=rng.randrange(len(WARM_PALETTE)),
        )
        for place in places
    ]


def _prompt(layout: list[_Shape]) -> str:
    parts = [f"a {shape.size} {shape.kind} at the {shape.place}" for shape in layout]
    if len(parts) > 1:
        parts[-1] = "and " + parts[-1]
    return (", " if len(parts) > 2 else " ").join(parts) + ", flat illustration"


def _render(layout: list[_Shape], palette: tuple[Rgb, ...], background: Rgb, resolution: int) -> Image.Image:
    image = Image.new("RGB", (resolution, resolution), background)
    draw = ImageDraw.Draw(image)
    for shape in layout:
        cx, cy = (c * resolution for c in _PLACES[shape.place])
        r = _SIZES[shape.size] * resolution
        fill = palette[shape.colour]
        if shape.kind == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif shape.kind == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif shape.kind == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    return image


def _encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **({"quality": 95} if image_format == "JPEG" else {}))
    return buffer.getvalue()


def write_demo_upload(
    path: Path,
    *,
    kind: Literal["zip", "tar", "parquet"],
    num_pairs: int = 48,
    resolution: int = 64,
    seed: int = 0,
    preset: DemoPreset = "warm-cool",
    layout: DemoLayout = "manifest",
    shards: int = DEMO_SHARDS,
    masks: bool = False,
) -> Path:
    """Write the demo pairs as a file a user would upload, and return `path`.

    - "zip" / "tar": by `layout`, `pairs.jsonl` plus `images/NNNN_{chosen,rejected}.png` ("manifest"),
      `NNNN.png` chosen images with their prompts in `NNNN.txt` ("captions", a targets upload),
      `w/NNNN.png`, `l/NNNN.png` and `NNNN.txt` ("pair-folders"), at the archive root, or the "parquet"
      file's rows split into `shards` files `data/train-0000K-of-0000N.parquet` ("parquet-shards", the
      last ones shorter when `shards` does not divide the pairs); a tar is gzipped when `path` ends in
      ".gz" or ".tgz".
    - "parquet": Pick-a-Pic columns `caption`, `jpg_0`, `jpg_1` (JPEG bytes), `label_0`, `label_1`; the
      chosen image alternates between the two columns, so only the labels tell which one it is.

    With `masks`, every other pair has a PNG mask over its shapes (`demo_pairs`): `masks/NNNN.png` named
    by the row's "mask" (manifest), `m/NNNN.png` (pair folders), or a `mask` column, null on the other
    rows (parquet, parquet shards). Captioned images have no place for one.
    """
    if shards < 1:
        raise ValueError(f"shards must be at least 1, not {shards}")
    if masks and layout == "captions":
        raise ValueError("captioned images have no place for a mask; use another layout")
    pairs = demo_pairs(
        num_pairs=num_pairs,
        resolution=resolution,
        seed=seed,
        image_format="JPEG" if kind == "parquet" or layout == "parquet-shards" else "PNG",
        preset=preset,
        masks=masks,
    )
    if kind == "parquet":
        if layout != "manifest":
            raise ValueError(f"a parquet upload has no {layout} layout; use a zip or tar")
        path.write_bytes(_parquet_bytes(list(pairs)))
    elif layout == "parquet-shards":
        _write_archive(path, kind, _shard_files(list(pairs), shards))
    else:
        _write_archive(path, kind, _ARCHIVE_FILES[layout](pairs))
    return path


def _manifest_files(pairs: Iterator[DemoPair]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    lines = []
    for index, pair in enumerate(pairs):
        chosen, rejected = f"images/{index:04d}_chosen.png", f"images/{index:04d}_rejected.png"
        files[chosen], files[rejected] = pair.chosen, pair.rejected
        row = {"prompt": pair.prompt, "chosen": chosen, "rejected": rejected}
        if pair.mask is not None:
            row["mask"] = f"masks/{index:04d}.png"
            files[row["mask"]] = pair.mask
        lines.append(json.dumps(row) + "\n")
    files["pairs.jsonl"] = "".join(lines).encode("utf-8")
    return files


def _caption_files(pairs: Iterator[DemoPair]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for index, pair in enumerate(pairs):
        files[f"{index:04d}.png"], files[f"{index:04d}.txt"] = pair.chosen, pair.prompt.encode("utf-8")
    return files


def _pair_folder_files(pairs: Iterator[DemoPair]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for index, pair in enumerate(pairs):
        files[f"w/{index:04d}.png"], files[f"l/{index:04d}.png"] = pair.chosen, pair.rejected
        files[f"{index:04d}.txt"] = pair.prompt.encode("utf-8")
        if pair.mask is not None:
            files[f"m/{index:04d}.png"] = pair.mask
    return files


def _shard_files(pairs: list[DemoPair], shards: int) -> dict[str, bytes]:
    size = -(-len(pairs) // shards)  # ceiling: the last shards are the shorter ones
    return {
        f"data/train-{k:05d}-of-{shards:05d}.parquet": _parquet_bytes(
            pairs[k * size : (k + 1) * size], k * size
        )
        for k in range(shards)
    }


_ARCHIVE_FILES: dict[DemoLayout, Callable[[Iterator[DemoPair]], dict[str, bytes]]] = {
    "manifest": _manifest_files,
    "captions": _caption_files,
    "pair-folders": _pair_folder_files,
}


def _write_archive(path: Path, kind: Literal["zip", "tar"], files: dict[str, bytes]) -> None:
    if kind == "zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in files.items():
                archive.writestr(name, data)
        return
    gzipped = path.name.endswith((".gz", ".tgz"))
    with tarfile.open(path, "w:gz") if gzipped else tarfile.open(path, "w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def _parquet_bytes(pairs: list[DemoPair], first_index: int = 0) -> bytes:
    """A Pick-a-Pic parquet file of `pairs`, the first of which is pair `first_index` of the upload (whose
    parity decides which column holds its chosen image)."""
    # pyarrow is a base dependency, but only this function needs it: keep importing the module cheap.
    import pyarrow as pa
    import pyarrow.parquet as pq

    masked = any(pair.mask is not None for pair in pairs)
    names = ("caption", "jpg_0", "jpg_1", "label_0", "label_1", *(["mask"] if masked else []))
    columns: dict[str, list[object]] = {name: [] for name in names}
    for index, pair in enumerate(pairs, start=first_index):
        flipped = index % 2 == 1
        columns["caption"].append(pair.prompt)
        columns["jpg_0"].append(pair.rejected if flipped else pair.chosen)
        columns["jpg_1"].append(pair.chosen if flipped else pair.rejected)
        columns["label_0"].append(0.0 if flipped else 1.0)
        columns["label_1"].append(1.0 if flipped else 0.0)
        if masked:
            columns["mask"].append(pair.mask)
    types = (pa.string(), pa.binary(), pa.binary(), pa.float64(), pa.float64(), pa.binary())
    schema = pa.schema(list(zip(names, types[: len(names)], strict=True)))
    out = io.BytesIO()
    pq.write_table(pa.table(columns, schema=schema), out, row_group_size=16)
    return out.getvalue()

"""Dataset ingest: upload + validation through the real API, next to a bare `unzip` + Pillow decode.

    python -m bench.dataset_ingest                  # 10,000 pairs of small PNGs, 5 rounds
    python -m bench.dataset_ingest --large          # also a ~2 GB archive of 512 px PNGs (slow)
    python -m bench.dataset_ingest --layouts manifest parquet-shards   # some layouts (default: all four)
    python -m bench.dataset_ingest --resumable      # also each archive in tus parts (/v1/uploads)

Builds the archives once (cached under the temp dir), deflated as zip tools do, in each layout: pairs.jsonl
and images/ (manifest); w/, l/ and a .txt caption per pair (pair-folders); the chosen images with
same-name .txt captions, uploaded as kind=targets with a trigger word (captions; one image per pair); and
4 Pick-a-Pic parquet shards data/train-0000K-of-00004.parquet, the PNGs as bytes in jpg_0/jpg_1
(parquet-shards).
Serves the API as the Dockerfile does (`uvicorn api.main:create_app --factory`, embedded defaults: SQLite,
local storage) and POSTs each archive to /v1/datasets with httpx, streaming it from disk; the clock runs
from the first byte sent to the 201. In the same round the bare floor runs: the `unzip` command into a
temp folder, then every image opened and fully decoded by Pillow, one after the other in one process (for
parquet shards: every image of each shard's jpg_0 and jpg_1, read in batches with pyarrow).
Peak RSS is the API process's high-water mark as the kernel keeps it (VmHWM, Linux), over all uploads so
far (so a layout's own peak is at most its figure). Rounds alternate bare and API; the table shows
medians. With --resumable each round also sends each archive the way `mapo datasets upload` does (the
SDK's resumable upload: 16 MiB tus parts, then POST /v1/uploads/{id}/dataset), timed the same way, so
the table shows what the parts cost beside one request.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from bench.api_load import HOST, REPO, _free_port, _wait_listening

WORK = Path(tempfile.gettempdir()) / "mapo-bench-ingest"
POOL = 256  # distinct images per archive; pairs draw from them


LAYOUTS = ("manifest", "pair-folders", "captions", "parquet-shards")
SHARDS = 4  # parquet files of the parquet-shards archive


@dataclass(frozen=True)
class Archive:
    label: str
    path: Path
    pairs: int
    layout: str = "manifest"


@dataclass(frozen=True)
class Round:
    bare_s: float
    api_s: float
    api_peak_rss_mb: float
    resumable_s: float | None = None


def main() -> None:
    args = _parse()
    archives = [
        _archive(f"{layout}, 64 px", pairs=args.pairs, side=64, layout=layout) for layout in args.layouts
    ]
    if args.large:
        archives.append(_archive(f"{args.large_gb:g} GB, 512 px", gigabytes=args.large_gb, side=512))
    results: dict[str, list[Round]] = {a.label: [] for a in archives}
    with tempfile.TemporaryDirectory() as tmp, _api(Path(tmp)) as (url, key, process):
        for round_ in range(args.rounds):
            for archive in archives:
                result = Round(
                    bare_s=_bare(archive.path, Path(tmp)),
                    **_upload(url, key, process, archive),
                    resumable_s=_upload_resumable(url, key, archive, Path(tmp)) if args.resumable else None,
                )
                results[archive.label].append(result)
                print(
                    f"  round {round_ + 1} {archive.label}: bare {result.bare_s:.1f} s, "
                    f"API {result.api_s:.1f} s, peak RSS {result.api_peak_rss_mb:.0f} MB",
                    file=sys.stderr,
                )
    _print_table(archives, results, args.rounds)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10_000, help="pairs of the small-image archive")
    parser.add_argument("--large", action="store_true", help="also the ~2 GB archive (minutes more)")
    parser.add_argument("--large-gb", type=float, default=2.0, help="size of the large archive")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--resumable", action="store_true", help="also upload in resumable tus parts")
    return parser.parse_args()


def _archive(
    label: str, *, side: int, pairs: int = 0, gigabytes: float = 0.0, layout: str = "manifest"
) -> Archive:
    """A zip of `pairs` pairs (or as many as make `gigabytes`) of `side` px PNGs, noisy so that they
    are as large as renders of that size."""
    rng = random.Random(side)
    pool = [_png(rng, side) for _ in range(POOL)]
    if gigabytes:
        pairs = round(gigabytes * 2**30 / (2 * statistics.mean(len(png) for png in pool)))
    suffix = "" if layout == "manifest" else f"-{layout}"
    path = WORK / f"pairs-{pairs}-{side}px{suffix}.zip"
    if not path.is_file():
        WORK.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        _write_archive(partial, pairs, pool, layout)
        partial.rename(path)
    return Archive(label, path, pairs, layout)


def _write_archive(path: Path, pairs: int, pool: list[bytes], layout: str) -> None:
    # Level 1: PNGs barely deflate, and the large archive would otherwise take minutes to build.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        if layout == "parquet-shards":
            _write_shards(archive, pairs, pool)
            return
        rows = io.StringIO()
        for i in range(pairs):
            chosen, rejected = pool[(2 * i) % POOL], pool[(2 * i + 1) % POOL]
            caption = f"a red circle, number {i}"
            if layout == "captions":
                archive.writestr(f"{i:06d}.png", chosen)
                archive.writestr(f"{i:06d}.txt", caption)
            elif layout == "pair-folders":
                archive.writestr(f"w/{i:06d}.png", chosen)
                archive.writestr(f"l/{i:06d}.png", rejected)
                archive.writestr(f"{i:06d}.txt", caption)
            else:
                names = f"images/{i:06d}_chosen.png", f"images/{i:06d}_rejected.png"
                archive.writestr(names[0], chosen)
                archive.writestr(names[1], rejected)
                rows.write(json.dumps({"prompt": caption, "chosen": names[0], "rejected": names[1]}) + "\n")
        if layout == "manifest":
            archive.writestr("pairs.jsonl", rows.getvalue())


def _write_shards(archive: zipfile.ZipFile, pairs: int, pool: list[bytes]) -> None:
    """The pairs as SHARDS Pick-a-Pic parquet files; the chosen image alternates between jpg_0 and jpg_1."""
    size = -(-pairs // SHARDS)
    for shard in range(SHARDS):
        numbers = range(shard * size, min((shard + 1) * size, pairs))
        flipped = [i % 2 == 1 for i in numbers]
        chosen, rejected = (
            [pool[(2 * i) % POOL] for i in numbers],
            [pool[(2 * i + 1) % POOL] for i in numbers],
        )
        table = pa.table(
            {
                "caption": [f"a red circle, number {i}" for i in numbers],
                "jpg_0": [r if f else c for c, r, f in zip(chosen, rejected, flipped, strict=True)],
                "jpg_1": [c if f else r for c, r, f in zip(chosen, rejected, flipped, strict=True)],
                "label_0": [0.0 if f else 1.0 for f in flipped],
                "label_1": [1.0 if f else 0.0 for f in flipped],
            }
        )
        out = io.BytesIO()
        pq.write_table(table, out, row_group_size=256)
        archive.writestr(f"data/train-{shard:05d}-of-{SHARDS:05d}.parquet", out.getvalue())


def _png(rng: random.Random, side: int) -> bytes:
    """A gradient with noise on top: PNG sizes like those of small renders (~1 byte per pixel)."""
    base = Image.linear_gradient("L").resize((side, side)).convert("RGB")
    noise = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    out = io.BytesIO()
    Image.blend(base, noise, 0.25).save(out, format="PNG")
    return out.getvalue()


def _bare(archive: Path, tmp: Path) -> float:
    """Seconds to unzip the archive and fully decode every image in it."""
    target = tmp / "bare"
    started = time.perf_counter()
    subprocess.run(["unzip", "-q", "-o", str(archive), "-d", str(target)], check=True)
    for image in sorted(target.rglob("*.png")):
        with Image.open(image) as decoded:
            decoded.load()
    for shard in sorted(target.rglob("*.parquet")):
        _decode_shard(shard)
    elapsed = time.perf_counter() - started
    shutil.rmtree(target)
    return elapsed


def _decode_shard(shard: Path) -> None:
    """Fully decode every image of a parquet shard, reading it in batches as the ingest does."""
    with pq.ParquetFile(shard) as parquet:
        for batch in parquet.iter_batches(batch_size=256, columns=["jpg_0", "jpg_1"]):
            for column in batch.columns:
                for value in column.to_pylist():
                    with Image.open(io.BytesIO(value)) as decoded:
                        decoded.load()


@contextmanager
def _api(tmp: Path) -> Iterator[tuple[str, str, psutil.Process]]:
    """uvicorn on embedded defaults with a fresh data dir; yields its URL, an API key and its process."""
    from core.settings import Settings
    from ops import admin

    env = {k: v for k, v in os.environ.items() if not k.startswith("MAPO_")}
    env["MAPO_DATA_DIR"] = str(tmp / "data")
    settings = Settings(data_dir=tmp / "data")
    admin.migrate(settings)
    key = admin.create_key(settings, "bench")
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "api.main:create_app",
        "--factory",
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_listening(port, process)
        yield f"http://{HOST}:{port}", key, psutil.Process(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _upload(url: str, key: str, process: psutil.Process, archive: Archive) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=3600) as client:
        started = time.perf_counter()
        with archive.path.open("rb") as stream:
            form = {"kind": "targets", "trigger_word": "sks"} if archive.layout == "captions" else {}
            files = {"file": (archive.path.name, stream)}
            response = client.post("/v1/datasets", files=files, data=form)
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        dataset = response.json()
        assert dataset["num_pairs"] == archive.pairs, dataset
        client.delete(f"/v1/datasets/{dataset['id']}").raise_for_status()
    return {"api_s": elapsed, "api_peak_rss_mb": _peak_rss_mb(process)}


def _upload_resumable(url: str, key: str, archive: Archive, tmp: Path) -> float:
    from client.sdk import MapoClient

    captions = archive.layout == "captions"
    with MapoClient(url, key, timeout=3600) as mapo:
        started = time.perf_counter()
        dataset = mapo.upload_dataset_resumable(
            archive.path,
            kind="targets" if captions else "pairs",
            trigger_word="sks" if captions else None,
            state_file=tmp / "uploads.json",
        )
        elapsed = time.perf_counter() - started
        assert dataset["num_pairs"] == archive.pairs, dataset
        mapo.delete_dataset(dataset["id"])
    return elapsed


def _peak_rss_mb(process: psutil.Process) -> float:
    """The kernel's high-water mark of the process's resident memory (VmHWM: since it started, so it
    covers every upload so far), plus that of any child processes it has now."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        status = Path(f"/proc/{member.pid}/status").read_text()
        total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return total / 1024


def _print_table(archives: list[Archive], results: dict[str, list[Round]], rounds: int) -> None:
    print(f"\nmedian of {rounds} rounds; API ÷ bare is the median of each round's ratio (bare s / API s)")
    print(
        f"{'archive':22} {'pairs':>6} {'MB':>6} {'bare s':>7} {'API s':>7} {'bare pairs/s':>13} "
        f"{'API pairs/s':>12} {'API ÷ bare':>11} {'API peak RSS MB':>16}"
    )
    for archive in archives:
        rows = results[archive.label]
        bare = statistics.median(r.bare_s for r in rows)
        api = statistics.median(r.api_s for r in rows)
        ratio = statistics.median(r.bare_s / r.api_s for r in rows)
        rss = max(r.api_peak_rss_mb for r in rows)
        size = archive.path.stat().st_size / 2**20
        print(
            f"{archive.label:22} {archive.pairs:6d} {size:6.0f} {bare:7.1f} {api:7.1f} "
            f"{archive.pairs / bare:13.0f} {archive.pairs / api:12.0f} {ratio:11.2f} {rss:16.0f}"
        )
    resumable = {a.label: [r for r in results[a.label] if r.resumable_s is not None] for a in archives}
    if not any(resumable.values()):
        return
    print(f"\n{'archive':22} {'one request s':>14} {'tus parts s':>12} {'parts ÷ one request':>20}")
    for label, rows in resumable.items():
        one = statistics.median(r.api_s for r in rows)
        parts = statistics.median(r.resumable_s or 0.0 for r in rows)
        each = statistics.median((r.resumable_s or 0.0) / r.api_s for r in rows)
        print(f"{label:22} {one:14.1f} {parts:12.1f} {each:20.2f}")


if __name__ == "__main__":
    main()

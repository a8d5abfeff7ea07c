"""Checkpoint upload and download throughput: the local storage directory vs an S3 object store on loopback.

    python -m bench.object_store                 # a ~730 MB checkpoint, SeaweedFS started on loopback
    python -m bench.object_store --scale 0.25    # a smaller one
    MAPO_STORAGE_URL=s3://bucket/bench MAPO_S3_ENDPOINT_URL=... python -m bench.object_store  # your store

The file set is shaped like a checkpoint of an SDXL LoRA of rank 32 as the trainer writes it (accelerate's
state: LoRA weights, AdamW moments twice their size, scheduler and RNG state; the diffusers adapter of the
step; state.json), random bytes so nothing compresses. Upload and download go through the same calls the
worker makes: `put_tree(..., last="state.json")` after each checkpoint and `fetch_tree` when a job resumes
on a host that lacks it. LocalStorage copies into a temp folder and renames it into place, both within the
page cache of one disk; S3Storage sends multipart uploads of 16 MiB parts, 8 at a time, over loopback HTTP
to `weed server` (master, volume, filer and S3 gateway in one process, its data on the same disk).
Each round uploads then downloads a fresh key; the table shows the median MB/s (MB = 10^6 bytes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from core.settings import Settings
from core.storage import Storage, build_storage

# Bytes of each file of an SDXL rank-32 LoRA checkpoint (accelerate save_state + the step's adapter).
CHECKPOINT_FILES = {
    "state/model.safetensors": 182_000_000,
    "state/optimizer.bin": 364_000_000,
    "state/scheduler.bin": 1_200,
    "state/random_states_0.pkl": 15_000,
    "lora/pytorch_lora_weights.safetensors": 182_000_000,
    "state.json": 200,
}


def make_checkpoint(root: Path, scale: float) -> int:
    """Write the file set under `root`; returns its total size in bytes."""
    total = 0
    for name, size in CHECKPOINT_FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        size = max(1, int(size * scale))
        with path.open("wb") as out:
            for start in range(0, size, 1 << 24):
                out.write(os.urandom(min(1 << 24, size - start)))
        total += size
    return total


def measure(storage: Storage, source: Path, scratch: Path, rounds: int) -> tuple[list[float], list[float]]:
    """Seconds of each round's upload and download of `source`."""
    ups, downs = [], []
    for round_ in range(rounds):
        key = f"bench/jobs/round-{round_}-{os.getpid()}/checkpoints/step-000100"
        dest = scratch / f"down-{round_}"
        start = time.perf_counter()
        storage.put_tree(key, source, last="state.json")
        uploaded = time.perf_counter()
        storage.fetch_tree(key, dest)
        ups.append(uploaded - start)
        downs.append(time.perf_counter() - uploaded)
        storage.delete_tree(key)
        shutil.rmtree(dest)
    return ups, downs


def backends(stack: ExitStack, scratch: Path) -> dict[str, Settings]:
    local = Settings(data_dir=scratch / "local")
    if os.environ.get("MAPO_STORAGE_URL"):
        return {"local directory": local, "S3 (MAPO_STORAGE_URL)": Settings()}
    from ops.local_s3 import LocalS3Server

    server = LocalS3Server(scratch / "seaweedfs")
    stack.callback(server.close)
    s3 = Settings(
        data_dir=scratch / "s3",
        storage_url=f"s3://{server.BUCKET}/bench",
        s3_endpoint_url=server.endpoint_url,
        s3_access_key_id=server.ACCESS_KEY,
        s3_secret_access_key=server.SECRET_KEY,  # type: ignore[arg-type]
    )
    return {"local directory": local, "S3, SeaweedFS on loopback": s3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="Multiply every file size by this.")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mapo-bench-store-")))
        total = make_checkpoint(scratch / "checkpoint", args.scale)
        rows = {}
        for name, settings in backends(stack, scratch).items():
            ups, downs = measure(build_storage(settings), scratch / "checkpoint", scratch, args.rounds)
            rows[name] = (statistics.median(ups), statistics.median(downs))
    print(
        f"\ncheckpoint of {len(CHECKPOINT_FILES)} files, {total / 1e6:.0f} MB; median of {args.rounds} rounds"
    )
    print(f"{'storage':28} {'upload MB/s':>12} {'download MB/s':>14} {'upload s':>9} {'download s':>11}")
    for name, (up, down) in rows.items():
        print(f"{name:28} {total / up / 1e6:12.0f} {total / down / 1e6:14.0f} {up:9.2f} {down:11.2f}")


if __name__ == "__main__":
    main()

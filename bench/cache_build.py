"""Building the latent cache: seconds and peak memory per number of images a VAE call encodes.

    python -m bench.cache_build                                   # small SDXL, 64 pairs, 128 and 256 px
    python -m bench.cache_build --resolutions 1024 --images 1 2 4 8 --pairs 16   # on a GPU

Each setting runs `trainer.encoding.build_cache` over the demo pairs (hflip on, so four images a pair)
in a fresh child process, so its peak memory is its own: peak RSS on the CPU (the rise over the loaded
model, which is what the cache adds), peak allocated CUDA memory on a GPU. Settings interleave over the
rounds; the table gives the median seconds and the largest peak. `default` is what the trainer uses
(`trainer.encoding.images_per_call`).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def _measure(config: dict[str, Any]) -> dict[str, float]:
    """One setting, in this process: the budget is set for the build and put back after it."""
    import torch

    from trainer import encoding

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    default = encoding.ENCODE_PIXELS[device.type]
    if config["images"] is not None:
        encoding.ENCODE_PIXELS[device.type] = config["images"] * config["resolution"] ** 2
    try:
        return _build(device, config)
    finally:
        encoding.ENCODE_PIXELS[device.type] = default


def _build(device: torch.device, config: dict[str, Any]) -> dict[str, float]:
    """Seconds and peak memory of building the cache of `config`'s pairs, after a one-pair warm-up."""
    import torch

    from bench.trainer_step import _dataset, _model
    from trainer.data import Augment, load_pairs
    from trainer.encoding import build_cache, images_per_call
    from trainer.families.registry import load_family

    resolution = config["resolution"]
    family = load_family(str(_model("sdxl", config["preset"])), device=device, weight_dtype=torch.float32)
    root = _dataset(resolution, config["pairs"])
    pairs = load_pairs(root)
    augment = Augment(resolution, random_crop=False, hflip=True)
    build_cache(family, root, pairs[:1], augment)  # warm-up: first-call allocations, thread pools
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    build_cache(family, root, pairs, augment)
    seconds = time.perf_counter() - started
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    return {"seconds": seconds, "peak_mb": peak, "per_call": images_per_call(device, resolution)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--images", nargs="+", type=int, default=[1, 4, 16, 32], help="images per VAE call")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "full"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_measure(json.loads(args.one))))
        return
    settings: list[int | None] = [None, *args.images]
    print(f"\n{'px':>5} {'images/call':>12} {'seconds':>8} {'peak MB':>8}")
    for resolution in args.resolutions:
        runs: dict[int | None, list[dict[str, float]]] = {s: [] for s in settings}
        for _ in range(args.rounds):
            for images in settings:
                config = {"resolution": resolution, "images": images, "pairs": args.pairs}
                runs[images].append(_child({**config, "preset": args.preset}))
        for images, results in runs.items():
            label = f"default ({int(results[0]['per_call'])})" if images is None else str(images)
            seconds = statistics.median(r["seconds"] for r in results)
            peak = max(r["peak_mb"] for r in results)
            print(f"{resolution:5} {label:>12} {seconds:8.2f} {peak:8.0f}")


def _child(config: dict[str, Any]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.cache_build", "--one", json.dumps(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


if __name__ == "__main__":
    main()

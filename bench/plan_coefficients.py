"""Measure the planner's per-family activation coefficient (trainer/plan.py) on the CPU.

    python -m bench.plan_coefficients                         # every family, small preset, 64 px
    python -m bench.plan_coefficients --families sdxl flux --resolution 128

Each family trains MaPO for 2 steps through the real `trainer.train()` (cache on, float32, LoRA rank 4)
at two batch sizes, each in a fresh process whose RSS high-water mark is its peak. The difference of the
two peaks is the activations of the extra images alone (weights, runtime and caches cancel), so

    coefficient = (peak(b_large) - peak(b_small)) / (2 (b_large - b_small) x latent pixels x widths x 4)

where widths is the sum of the denoiser's linear output widths. The table also prints each peak beside
the planner's estimate with the measured coefficient, and the bare runtime's RSS (RUNTIME_HOST_BYTES).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.trainer_step import _dataset, _model
from trainer.families import FAMILIES

MiB = 2**20
BATCHES = (1, 4)


def main() -> None:
    args = _parse()
    data = _dataset(args.resolution, 8)
    runtime = _child({"kind": "runtime"})["peak_rss"]
    print(f"runtime RSS (torch, diffusers, transformers, peft imported): {runtime / MiB:.0f} MiB")
    print(f"{'family':11} {'coefficient':>11} " + " ".join(f"{'peak b=' + str(b):>11}" for b in BATCHES))
    for family in args.families:
        model = _model(family, args.preset)
        peaks = [_peak(model, data, args.resolution, batch) for batch in BATCHES]
        coefficient = _coefficient(model, args.resolution, peaks)
        cells = " ".join(f"{p / MiB:>9.0f}Mi" for p in peaks)
        print(f"{family:11} {coefficient:>11.3f} {cells}")


def _peak(model: Path, data: Path, resolution: int, batch: int) -> int:
    config = {"kind": "train", "model": str(model), "data": str(data), "resolution": resolution}
    return int(_child({**config, "batch": batch})["peak_rss"])


def _coefficient(model: Path, resolution: int, peaks: list[int]) -> float:
    from trainer.plan import latent_pixels, read_base_model

    weights = read_base_model(model)
    widths = sum(layer.out_features for layer in weights.denoiser.linears)
    extra_images = 2 * (BATCHES[1] - BATCHES[0])
    return (peaks[1] - peaks[0]) / (extra_images * latent_pixels(resolution) * widths * 4)


def _child(config: dict[str, Any]) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.plan_coefficients", "--one", json.dumps(config)]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{config} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _run_one(config: dict[str, Any]) -> dict[str, Any]:
    import diffusers  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    if config["kind"] == "train":
        _train(config)
    return {"peak_rss": peak_rss_bytes()}


def peak_rss_bytes() -> int:
    """This process's resident high-water mark since it started: the kernel's VmHWM. Not getrusage's
    ru_maxrss, which Linux carries across exec from the forked parent: a child of a 1.4 GB pytest process
    reported 1.4 GB however little it used."""
    status = Path("/proc/self/status")
    if status.is_file():
        line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # no /proc: KiB, as Linux reports it


def _train(config: dict[str, Any]) -> None:
    from trainer.loop import train
    from trainer.spec import TrainSpec

    spec = TrainSpec(
        base_model=config["model"],
        resolution=config["resolution"],
        train_batch_size=config["batch"],
        gradient_accumulation_steps=1,
        max_train_steps=2,
        learning_rate=1e-4,
        lora_rank=4,
        checkpoint_every_n_steps=10_000,
        compile_denoiser=False,
    )
    with tempfile.TemporaryDirectory() as out:
        train(spec, Path(config["data"]), Path(out), on_event=lambda _event: None)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--preset", default="small", choices=["tiny", "small"])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = _parse()
    if arguments.one:
        print(json.dumps(_run_one(json.loads(arguments.one))))
    else:
        main()

"""Trainer step benchmark: wall time per optimizer step and peak memory of mapo, dpo and sft, side by side.

    python -m bench.trainer_step                    # tiny and small SDXL, 64 and 128 px, cached or not
    python -m bench.trainer_step --presets small --resolutions 128 --steps 30
    python -m bench.trainer_step --families sd3 flux --presets small --resolutions 128
    python -m bench.trainer_step --families sd flux --presets small --resolutions 128 --methods sft mapo
    python -m bench.trainer_step --presets full --resolutions 1024 --gradient-checkpointing   # on a GPU
    python -m bench.trainer_step --variants --presets small --resolutions 128 --rounds 12  # faster floor

Every configuration runs in a fresh child process (so peak memory is its own) through the real
`trainer.train()` on the synthetic demo pairs, with 2 pairs per batch and LoRA rank 4 (the setting the
reference scripts were measured in). The first `--warmup` steps are dropped; the table shows the median
of the rest. "floor" is one bare forward + backward of the LoRA denoiser (UNet or transformer, through
its family's `predict`) on the same 2B latents: no data
loading, no VAE, no text encoders, no optimizer — what a step cannot go below.
Methods run interleaved per configuration, so machine noise hits all of them alike.
`full` is a real-size model with random weights (bench/full_sdxl.py, bench/full_flux.py; meant for a GPU).
On CUDA the table adds
peak GPU memory and the achieved TFLOP/s: the floor's forward + backward FLOPs (counted once with
torch's FlopCounterMode) divided by each row's step time, so a row's figure is the policy pass's useful
work per second (DPO's extra reference forward counts as overhead), against the card's bf16 dense peak.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.floor_variants import print_variants
from trainer.families import FAMILIES

# Keyed by the tiny-model builder's source, so a change to it never benchmarks a stale model.
_BUILDERS = sorted((Path(__file__).resolve().parents[1] / "trainer" / "synthetic").glob("tiny*.py"))
_BUILDER_HASH = hashlib.sha256(b"".join(p.read_bytes() for p in _BUILDERS)).hexdigest()[:10]
WORK = Path(tempfile.gettempdir()) / f"mapo-bench-{_BUILDER_HASH}"
METHODS = ("mapo", "dpo", "sft")
CACHE_CHOICES = {"both": (False, True), "on": (True,), "off": (False,)}
# bf16 dense tensor-core peak (TFLOP/s) of the cards we are lent; the H200 has the H100's compute.
BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


def main() -> None:
    args = _parse()
    if args.variants:
        _variants_main(args)
        return
    rows = []
    for family, preset in ((f, p) for f in args.families for p in args.presets):
        model = _model(family, preset)
        for resolution in args.resolutions:
            data = _dataset(resolution, args.pairs)
            for cache in CACHE_CHOICES[args.cache]:
                for method in args.methods:
                    rows.append(
                        _child(
                            {
                                "kind": "train",
                                "model": str(model),
                                "data": str(data),
                                "method": method,
                                "resolution": resolution,
                                "cache": cache,
                                "steps": args.steps,
                                "warmup": args.warmup,
                                "preset": preset,
                                "family": family,
                                "gradient_checkpointing": args.gradient_checkpointing,
                            }
                        )
                    )
            rows.append(
                _child(
                    {
                        "kind": "floor",
                        "model": str(model),
                        "resolution": resolution,
                        "steps": args.steps,
                        "warmup": args.warmup,
                        "preset": preset,
                        "family": family,
                        "gradient_checkpointing": args.gradient_checkpointing,
                    }
                )
            )
    _print_table([row for row in rows if row is not None])
    if args.json:
        Path(args.json).write_text(json.dumps([row for row in rows if row is not None], indent=2))


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=["tiny", "small", "full"])
    parser.add_argument("--families", nargs="+", default=["sdxl"], choices=sorted(FAMILIES))
    parser.add_argument("--resolutions", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--steps", type=int, default=20, help="measured steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="steps dropped before measuring")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute UNet activations")
    parser.add_argument("--pairs", type=int, default=16, help="pairs in the synthetic dataset")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--cache", choices=sorted(CACHE_CHOICES), default="both", help="latent cache rows")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="methods timed")
    parser.add_argument("--variants", action="store_true", help="time floor variants side by side instead")
    parser.add_argument("--rounds", type=int, default=12, help="--variants: interleaved rounds (median)")
    parser.add_argument("--compile", action="store_true", help="--variants: add torch.compile (minutes)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    return parser.parse_args()


def full_builder(family: str) -> str:
    """The module that builds `family`'s real-size random pipeline: bench.full_<family>, where it exists."""
    module = f"bench.full_{family}"
    if importlib.util.find_spec(module) is None:
        raise SystemExit(f"no real-size config for {family}: {module} does not exist")
    return module


def _model(family: str, preset: str) -> Path:
    path = WORK / f"{preset}-{family}"
    if preset == "full" and not (path / "model_index.json").is_file():
        # In a child, so this process never holds GPU memory the measured children could use.
        subprocess.run([sys.executable, "-m", full_builder(family), str(path)], check=True)
    if not (path / "model_index.json").is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "trainer",
                "make-tiny-model",
                "--family",
                family,
                "--preset",
                preset,
                "--out",
                str(path),
            ],
            check=True,
            capture_output=True,
        )
    return path


def _dataset(resolution: int, pairs: int) -> Path:
    path = WORK / f"demo-{resolution}-{pairs}"
    if not (path / "manifest.json").is_file():
        from trainer.synthetic.demo_data import make_demo_dataset

        make_demo_dataset(path, num_pairs=pairs, resolution=resolution)
    return path


def _device_name() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _child(config: dict[str, Any]) -> dict[str, Any] | None:
    """Run one configuration in a fresh process and print its row; None if it failed."""
    row: dict[str, Any] | None = _in_child(config)
    if row is not None:
        print(
            f"  {row['family']:4} {row['preset']:5} {row['resolution']:4}px {row['label']:14} "
            f"{row['step_ms']:8.1f} ms",
            file=sys.stderr,
        )
    return row


def _in_child(config: dict[str, Any]) -> Any:
    """What `--one config` prints last, run in a fresh process; a failure (say, out of GPU memory) is
    reported and gives None, so the other rows of the table still come out."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.trainer_step", "--one", json.dumps(config)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        print(f"  FAILED {config}:\n{out.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run_one(config: dict[str, Any]) -> dict[str, Any]:
    flops: dict[str, float] = {}
    if config["kind"] == "floor":
        times, flops["flops_per_step"], cuda = _floor_times(config)
        label = "floor"
    else:
        times = _train_times(config)
        cuda = _cuda_facts()
        label = f"{config['method']}{' cached' if config['cache'] else ''}"
    measured = times[config["warmup"] :]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "family": config.get("family", "sdxl"),
        "preset": config["preset"],
        "resolution": config["resolution"],
        "label": label,
        "step_ms": 1000 * statistics.median(measured),
        "peak_rss_mb": peak_mb,
        "gradient_checkpointing": config.get("gradient_checkpointing", False),
        **flops,
        **cuda,
    }


def _train_times(config: dict[str, Any]) -> list[float]:
    return step_times(
        config,
        cache_latents=config["cache"],
        gradient_checkpointing=config.get("gradient_checkpointing", False),
        hflip=True,
    )


def step_times(config: dict[str, Any], **fields: Any) -> list[float]:
    """Every optimizer step's wall time of a real `train()` of `config` (model, method, resolution, data,
    steps + warmup) at the bench's setting, 2 pairs per step and LoRA rank 4, with `fields` on top."""
    from trainer.events import Step
    from trainer.loop import train
    from trainer.spec import TrainSpec

    spec = TrainSpec(
        base_model=config["model"],
        method=config["method"],
        resolution=config["resolution"],
        train_batch_size=2,
        gradient_accumulation_steps=1,
        max_train_steps=config["steps"] + config["warmup"],
        learning_rate=1e-4,
        lora_rank=4,
        mixed_precision="bf16",
        checkpoint_every_n_steps=10_000,
        **fields,
    )
    times: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        train(
            spec,
            Path(config["data"]),
            Path(out),
            on_event=lambda e: times.append(e.metrics["step_time_s"]) if isinstance(e, Step) else None,
        )
    return times


def _floor_times(config: dict[str, Any]) -> tuple[list[float], float, dict[str, Any]]:
    """Bare forward + backward times of the LoRA denoiser on 2B latents, the FLOPs of one such pass, and
    the GPU facts (peak memory) of the timed passes."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bench.floor_batch import load_floor

    device = torch.device(_device_name())
    floor = load_floor(config, device)
    family, denoiser = floor.family, floor.denoiser
    latents, cond, levels, geometry = floor.latents, floor.cond, floor.levels, floor.geometry

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pred = family.predict(denoiser, latents, levels, cond, geometry)
        pred.float().pow(2).mean().backward()  # type: ignore[no-untyped-call]
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    for _ in range(config["steps"] + config["warmup"]):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    facts = _cuda_facts()
    counter = FlopCounterMode(display=False)
    with counter:  # attention runs unfused under the counter, so this pass's memory is not the floor's
        step()
    return times, float(counter.get_total_flops()), facts


def _cuda_facts() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {}
    return {
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20,
        "device": torch.cuda.get_device_name(),
    }


def _peak_tflops(device: str | None) -> float | None:
    return next((peak for name, peak in BF16_PEAK_TFLOPS.items() if device and name in device), None)


def _print_table(rows: list[dict[str, Any]]) -> None:
    on_gpu = any("cuda_peak_mb" in row for row in rows)
    if on_gpu:
        print(f"\ndevice: {rows[0]['device']}, bf16 peak {_peak_tflops(rows[0]['device'])} TFLOP/s")
    header = f"{'model':11} {'px':>4} {'method':14} {'ms/step':>9} {'÷ floor':>8} {'÷ dpo':>7}"
    header += f" {'peak RSS MB':>12}"
    print("\n" + header + (f" {'GPU peak MB':>12} {'TFLOP/s':>8} {'% peak':>7}" if on_gpu else ""))
    for row in rows:
        key = (row.get("family", "sdxl"), row["preset"], row["resolution"])
        same = [r for r in rows if (r.get("family", "sdxl"), r["preset"], r["resolution"]) == key]
        floor = next(
            (r for r in same if r["label"] == "floor"), {"step_ms": float("nan"), "flops_per_step": 0}
        )
        cached = row["label"].endswith("cached")
        dpo = next((r["step_ms"] for r in same if r["label"] == "dpo" + (" cached" if cached else "")), None)
        ratio = f"{row['step_ms'] / dpo:7.2f}" if dpo and row["label"] != "floor" else f"{'':7}"
        line = (
            f"{row.get('family', 'sdxl') + '-' + row['preset']:11} {row['resolution']:4} {row['label']:14} "
            f"{row['step_ms']:9.1f} "
            f"{row['step_ms'] / floor['step_ms']:8.2f} {ratio} {row['peak_rss_mb']:12.0f}"
        )
        if on_gpu:
            tflops = floor["flops_per_step"] / (row["step_ms"] / 1000) / 1e12
            peak = _peak_tflops(row.get("device"))
            share = f"{100 * tflops / peak:6.1f}%" if peak else f"{'':7}"
            line += f" {row.get('cuda_peak_mb', 0):12.0f} {tflops:8.1f} {share}"
        print(line)


def _variants_main(args: argparse.Namespace) -> None:
    """Each model and resolution in a child of its own (its own peak memory), its variants inside it."""
    rows: list[dict[str, Any]] = []
    for family, preset in ((f, p) for f in args.families for p in args.presets):
        model = _model(family, preset)
        for resolution in args.resolutions:
            config = {
                "kind": "variants",
                "model": str(model),
                "family": family,
                "preset": preset,
                "resolution": resolution,
                "rounds": args.rounds,
                "warmup": args.warmup,
                "compile": args.compile,
                "gradient_checkpointing": args.gradient_checkpointing,
            }
            rows.extend(_in_child(config) or [])
    print_variants(rows, BF16_PEAK_TFLOPS)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    if "--one" in sys.argv:
        config = json.loads(_parse().one)
        if config["kind"] == "variants":
            from bench.floor_variants import time_variants

            print(json.dumps(time_variants(config)))
        else:
            print(json.dumps(_run_one(config)))
    else:
        main()

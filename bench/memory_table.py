"""Memory of a quantized frozen base: every family x precision x method, resident weights, peak memory and
step time, side by side (the table of docs/memory.md).

    python -m bench.memory_table                                  # small presets, every family, MaPO
    python -m bench.memory_table --families sdxl flux --methods mapo dpo sft
    python -m bench.memory_table --presets full --families flux2 --precisions int8 nf4   # real size

Each row runs in a fresh child process (its peak is its own) through the real `trainer.train()` on the
demo pairs: 2 pairs per batch, LoRA rank 4, latent cache on, 128 px. Columns:
* `denoiser MB`: the frozen denoiser's resident bytes loaded with bf16 as its compute dtype, as on a
  GPU (quantized weights with their scales, plus what stays bf16: convolutions, norms, biases, and on the
  CPU the linear layers bitsandbytes' kernel cannot pack, input width not a multiple of 64); `÷ bf16`
  that over the same model's all-bf16 bytes ("fp32" rows load bf16 here too: the row trains in fp32);
* `peak MB`: on CUDA `torch.cuda.max_memory_allocated`, on the CPU the process's RSS high-water mark
  (Python, torch and the text encoders included: compare rows, not absolute values);
* `step ms`: median optimizer-step wall time after the warm-up steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.plan_coefficients import peak_rss_bytes
from bench.trainer_step import _dataset, _model, step_times
from trainer.families import FAMILIES

PRECISIONS = ("fp32", "int8", "nf4")
METHODS = ("mapo", "dpo", "sft")


def main() -> None:
    args = _parse()
    if args.one:
        print(json.dumps(_run_one(json.loads(args.one))))
        return
    rows = []
    data = _dataset(args.resolution, 16)
    for family in args.families:
        model = _model(family, args.preset)
        for precision in args.precisions:
            for method in args.methods:
                config = {
                    "family": family,
                    "model": str(model),
                    "data": str(data),
                    "precision": precision,
                    "method": method,
                    "resolution": args.resolution,
                    "steps": args.steps,
                    "warmup": args.warmup,
                }
                row = _child(config)
                if row is not None:
                    rows.append(row)
    _print_table(rows, args.preset)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "full"])
    parser.add_argument("--families", nargs="+", default=sorted(FAMILIES), choices=sorted(FAMILIES))
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--methods", nargs="+", default=["mapo"], choices=METHODS)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4, help="measured steps per row")
    parser.add_argument("--warmup", type=int, default=1, help="steps dropped before measuring")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    return parser.parse_args()


def _child(config: dict[str, Any]) -> dict[str, Any] | None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.memory_table", "--one", json.dumps(config)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        print(f"  FAILED {config}:\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    row: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    _print_row(row)  # as it comes: a long run's rows are not lost to an interruption
    return row


def _run_one(config: dict[str, Any]) -> dict[str, Any]:
    import torch

    from trainer.families.registry import load_family
    from trainer.spec import TrainSpec

    precision = None if config["precision"] == "fp32" else config["precision"]
    times = step_times(config, base_precision=precision)
    spec = TrainSpec(  # what step_times trained, for the planner
        base_model=config["model"],
        method=config["method"],
        resolution=config["resolution"],
        train_batch_size=2,
        gradient_accumulation_steps=1,
        lora_rank=4,
        mixed_precision="bf16",
        base_precision=precision,
    )
    cuda = torch.cuda.is_available()
    peak = torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()
    # Measured after the peak was read, in bf16 as a GPU holds a base: the float parts of a quantized
    # denoiser are in its compute dtype, which is float32 on the CPU.
    bf16, cpu = torch.bfloat16, torch.device("cpu")
    bf16_bytes = resident_bytes(load_family(config["model"], device=cpu, weight_dtype=bf16).denoiser)
    loaded = load_family(config["model"], device=cpu, weight_dtype=bf16, base_precision=precision)
    denoiser_bytes = resident_bytes(loaded.denoiser)
    planned = _planned(spec, Path(config["model"]), precision)
    return {
        **{k: config[k] for k in ("family", "precision", "method")},
        "denoiser_mb": denoiser_bytes / 2**20,
        "of_bf16": denoiser_bytes / bf16_bytes,
        "peak_mb": peak / 2**20,
        "planned_denoiser_mb": planned[0] / 2**20,
        "planned_peak_mb": planned[1] / 2**20,
        "peak_kind": "cuda" if cuda else "rss",
        "step_ms": 1000 * statistics.median(times[config["warmup"] :]),
    }


def _planned(spec: Any, model: Path, precision: str | None) -> tuple[int, int]:
    """The planner's (trainer/plan.py) resident denoiser bytes, counted as measured here (bf16 compute),
    and its peak for this run on this device: what the row's measurements are checked against."""
    from trainer import plan

    weights = plan.read_base_model(model)
    kind = "cuda" if spec.mixed_precision != "no" and _cuda() else "cpu"
    device = plan.device_class(kind=kind, gpu_model=None, memory_bytes=None)
    denoiser = plan.component_bytes(weights.denoiser, precision or "bf16", "bf16", on_cpu=kind == "cpu")
    memory = plan.plan(spec, weights, device).memory
    return denoiser, memory.peak_host if kind == "cpu" else memory.peak_device


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def resident_bytes(module: Any) -> int:
    """Bytes a module's parameters and buffers hold, counting what quantized tensors really store:
    bitsandbytes' packed 4-bit bytes plus its quantization state, torchao's int8 data plus scales."""
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        total += _tensor_bytes(tensor)
    return total


def _tensor_bytes(tensor: Any) -> int:
    inner = tensor.data if hasattr(tensor, "data") else tensor
    if hasattr(inner, "__tensor_flatten__"):  # torchao: the tensors it is made of
        names, _ = inner.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(inner, name)) for name in names)
    own = int(inner.numel() * inner.element_size())
    state = getattr(tensor, "quant_state", None)  # bitsandbytes Params4bit
    if state is not None:
        own += sum(int(t.numel() * t.element_size()) for t in _state_tensors(state))
    return own


def _state_tensors(state: Any) -> list[Any]:
    """absmax (and, double-quantized, its own absmax and code) and the code book of a 4-bit state."""
    tensors = [t for t in (state.absmax, state.code) if t is not None]
    nested = getattr(state, "state2", None)
    if nested is not None:
        tensors += [t for t in (nested.absmax, nested.code) if t is not None]
    return tensors


def _print_table(rows: list[dict[str, Any]], preset: str) -> None:
    print(f"\n{preset} presets, 128 px, 2 pairs per step, LoRA rank 4, latent cache on")
    print(HEADER)
    for row in rows:
        _print_row(row, sys.stdout)


HEADER = (
    "| family | precision | method | denoiser MB (plan) | ÷ bf16 | peak MB (plan) | step ms |\n"
    "|---|---|---|---|---|---|---|"
)


def _print_row(row: dict[str, Any], out: Any = sys.stderr) -> None:
    print(
        f"| {row['family']} | {row['precision']} | {row['method']} | {row['denoiser_mb']:.1f} "
        f"({row['planned_denoiser_mb']:.1f}) | {row['of_bf16']:.2f} | {row['peak_mb']:.0f} "
        f"({row['planned_peak_mb']:.0f}) {row['peak_kind']} | {row['step_ms']:.0f} |",
        file=out,
    )


if __name__ == "__main__":
    main()

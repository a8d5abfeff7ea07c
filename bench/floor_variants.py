"""Ways to make the floor (one LoRA denoiser forward + backward) faster, timed side by side.

`python -m bench.trainer_step --variants ...` runs `time_variants` in a child per model and resolution:
every variant is a closure over the same loaded model, batch and LoRA, and the rounds are interleaved
(round r runs every variant once), so a busy machine slows all of them alike; the table shows medians
and each variant's ratio to the plain floor. Variants that change the module (channels_last, compile)
get their own copy so the others stay as they were. DPO's two ways of adding the frozen reference: a
separate no-grad forward with the LoRA off (what the trainer does) and one forward + backward of twice
the batch, which is what folding the reference into the policy pass would cost (peft switches adapters
per module, not per sample, so a fold would mask the LoRA's output of the reference half; the masking
itself is cheap, the doubled backward is not).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from peft.tuners.lora import Linear as PeftLoraLinear

from bench.floor_batch import load_floor
from trainer.compiling import compile_blocks
from trainer.fast_floor import adamw_options, channels_last_pays
from trainer.lora import lora_switched_off
from trainer.lora_linear import FusedLoraLinear

Step = Callable[[], None]


def time_variants(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Median seconds of each variant over `rounds` interleaved rounds (after `warmup` dropped)."""
    from trainer.families.base import ImageGeometry

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    floor = load_floor(config, device)
    family, denoiser = floor.family, floor.denoiser
    latents, cond, levels, geometry = floor.latents, floor.cond, floor.levels, floor.geometry
    cuda = device.type == "cuda"

    def pass_of(
        model: Any, *, bf16: bool = cuda, doubled: bool = False, reference: str | None = None
    ) -> Step:
        """A policy forward + backward; `reference` adds DPO's gradient-free base-model pass, switched
        the trainer's way ("flags": trainer.lora.lora_switched_off in inference mode) or peft's
        ("peft": disable_adapters() under no_grad)."""
        x, c, t, g = latents, cond, levels, geometry
        if doubled:
            x, c, t = x.repeat(2, 1, 1, 1), c.repeat(2), t.repeat(2)
            g = ImageGeometry(g.original_sizes.repeat(2, 1), g.crop_top_lefts.repeat(2, 1), g.resolution)

        def step() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                pred = family.predict(model, x, t, c, g)
                if reference == "flags":
                    with torch.inference_mode(), lora_switched_off(model):
                        family.predict(model, x, t, c, g)
                elif reference == "peft":
                    model.disable_adapters()
                    with torch.no_grad():
                        family.predict(model, x, t, c, g)
                    model.enable_adapters()
            pred.float().pow(2).mean().backward()  # type: ignore[no-untyped-call]
            if cuda:
                torch.cuda.synchronize()

        return step

    variants: dict[str, Step] = {
        "floor": pass_of(denoiser),
        "peft's LoRA forward": pass_of(_peft_forward(denoiser)),
    }
    if not cuda:
        variants["bf16 autocast"] = pass_of(denoiser, bf16=True)
        variants["bf16 fpmath (oneDNN)"] = _with_bf16_fpmath(pass_of(denoiser))
    layout = copy.deepcopy(denoiser)
    layout.to(memory_format=torch.channels_last)
    variants["channels_last"] = pass_of(layout)
    variants["floor + update"] = _with_update(variants["floor"], denoiser)
    variants["floor + update, foreach"] = _with_update(variants["floor"], denoiser, foreach=True)
    variants["dpo: separate ref"] = pass_of(denoiser, reference="flags")
    variants["dpo: separate, peft switch"] = pass_of(denoiser, reference="peft")
    variants["dpo: folded ref"] = pass_of(denoiser, doubled=True)
    compile_s = None
    if config.get("compile"):
        compiled = copy.deepcopy(denoiser)
        compile_blocks(compiled, family.repeated_block_names())
        started = time.perf_counter()
        pass_of(compiled)()  # the first call compiles
        compile_s = time.perf_counter() - started
        variants["torch.compile (blocks)"] = pass_of(compiled)
    medians = _interleaved(variants, config["rounds"], config["warmup"])
    flops = _flops(variants["floor"]) if cuda else None
    facts = {
        "family": config["family"],
        "preset": config["preset"],
        "resolution": config["resolution"],
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "channels_last_by_default": channels_last_pays(device, denoiser),
    }
    rows = [
        {**facts, "variant": name, "step_ms": 1000 * s, "floor_flops": flops} for name, s in medians.items()
    ]
    if compile_s is not None:
        rows.append({**facts, "variant": "torch.compile (blocks): first call", "step_ms": 1000 * compile_s})
    return rows


def _peft_forward(denoiser: torch.nn.Module) -> torch.nn.Module:
    """A copy of the denoiser whose LoRA layers run peft's own forward instead of the trainer's
    (trainer/lora_linear.py): the same weights and layers, only the computation differs."""
    stock = copy.deepcopy(denoiser)
    for layer in stock.modules():
        if isinstance(layer, FusedLoraLinear):
            layer.__class__ = PeftLoraLinear
    return stock


def _with_bf16_fpmath(step: Step) -> Step:
    """The float32 pass with oneDNN allowed to run its matmuls and convolutions in bf16 internally (the
    CPU's counterpart of CUDA's TF32): no casts in the graph, unlike autocast."""
    # torch's stubs lack the per-operation fp32_precision switches the module has at runtime.
    backends: Any = torch.backends.mkldnn

    def run() -> None:
        backends.matmul.fp32_precision = backends.conv.fp32_precision = "bf16"
        try:
            step()
        finally:
            backends.matmul.fp32_precision = backends.conv.fp32_precision = "none"

    return run


def _with_update(step: Step, denoiser: torch.nn.Module, *, foreach: bool = False) -> Step:
    """The floor plus the update the trainer runs after it: gradient clipping, AdamW with the trainer's
    options (`adamw_options`: fused on the CPU and CUDA) or foreach, and zero_grad(set_to_none)."""
    trainable = [p for p in denoiser.parameters() if p.requires_grad]
    options = {"foreach": True} if foreach else adamw_options(trainable)
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, **options)

    def run() -> None:
        step()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def _flops(step: Step) -> float:
    """Forward + backward FLOPs of one floor pass: the useful work each variant's time is set against."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def _interleaved(variants: dict[str, Step], rounds: int, warmup: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds + warmup):
        for name, step in variants.items():
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t[warmup:]) for name, t in times.items()}


def print_variants(rows: list[dict[str, Any]], peaks: dict[str, float]) -> None:
    """The table; on CUDA also the floor's FLOPs per variant's time, against the card's bf16 peak."""
    print(
        f"\n{'model':11} {'px':>4} {'device':10} {'variant':26} {'ms/step':>9} {'÷ floor':>8} TFLOP/s % peak"
    )
    for row in rows:
        key = (row["family"], row["preset"], row["resolution"])
        floor = next(
            r["step_ms"]
            for r in rows
            if (r["family"], r["preset"], r["resolution"]) == key and r["variant"] == "floor"
        )
        print(
            f"{row['family'] + '-' + row['preset']:11} {row['resolution']:4} {row['device'][:10]:10} "
            f"{row['variant']:26} {row['step_ms']:9.1f} {row['step_ms'] / floor:8.2f}" + _rate(row, peaks)
        )


def _rate(row: dict[str, Any], peaks: dict[str, float]) -> str:
    if not row.get("floor_flops") or row["variant"].endswith("first call"):
        return ""
    tflops = row["floor_flops"] / (row["step_ms"] / 1000) / 1e12
    peak = next((value for name, value in peaks.items() if name in row["device"]), None)
    return f" {tflops:7.1f} " + (f"{100 * tflops / peak:5.1f}%" if peak else "")

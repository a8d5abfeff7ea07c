"""The planner against the trainer: `base_precision: auto` resolved at load time on this machine's own
memory, the planner's LoRA count against the adapter peft attaches, and its CPU estimate against the peak
RSS a real training process reaches."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import torch

from tests.support.specs import tiny_spec
from trainer.device_plan import resolve_auto, this_device
from trainer.events import Event, Started
from trainer.families.registry import family_class, load_family
from trainer.loop import train
from trainer.lora import attach_lora, trainable_parameters
from trainer.plan import RUNTIME_HOST_BYTES, lora_parameters, plan, read_base_model
from trainer.spec import TrainSpec

CPU = torch.device("cpu")
REPO_ROOT = Path(__file__).resolve().parents[2]
# The measured peak may exceed the estimate by this share, or fall short of it by this share: the issue's
# target for the CPU rows of docs/memory.md.
PEAK_TOLERANCE = 0.15


def test_auto_trains_in_float32_on_a_cpu_that_holds_the_float_model(
    tiny_sd: Path, color_pairs: Path, tmp_path: Path
) -> None:
    events: list[Event] = []
    spec = tiny_spec(tiny_sd, base_precision="auto", max_train_steps=1)
    train(spec, color_pairs, tmp_path, on_event=events.append)
    started = next(e for e in events if isinstance(e, Started))
    assert started.base_precision == "fp32"


def test_this_cpu_offers_its_available_memory_and_the_processes_own(tiny_sd: Path) -> None:
    device = this_device(CPU)
    assert device.kind == "cpu"
    assert device.memory_bytes is not None
    assert device.memory_bytes >= psutil.Process().memory_info().rss
    assert resolve_auto(tiny_spec(tiny_sd, base_precision="auto"), CPU).base_precision == "fp32"


def test_a_named_precision_is_left_as_it_is(tiny_sd: Path) -> None:
    spec = tiny_spec(tiny_sd, base_precision="int8")
    assert resolve_auto(spec, CPU) is spec


def test_the_planner_counts_the_lora_parameters_peft_attaches(tiny_model: Path, family_name: str) -> None:
    model = load_family(str(tiny_model), device=CPU, weight_dtype=torch.float32)
    targets = list(family_class(family_name).default_lora_targets)
    attach_lora(
        model.denoiser,
        fused=True,
        rank=4,
        alpha=4.0,
        dropout=0.0,
        targets=targets,
        exclude=[n for n in model.discarded_modules() if n.endswith(tuple(targets))],
    )
    attached = sum(p.numel() for p in trainable_parameters(model.denoiser))
    weights = read_base_model(tiny_model)
    planned = lora_parameters(TrainSpec(base_model=str(tiny_model), lora_rank=4), weights)
    # The planner does not know the layers a family discards (Qwen-Image's last text-stream output): it
    # counts their adapters too, an upper bound of a few kilobytes.
    discarded = set(model.discarded_modules())
    unattached = sum(
        4 * (w.in_features + w.out_features) for w in weights.denoiser.linears if w.name in discarded
    )
    assert planned - unattached == attached


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_the_cpu_estimate_holds_the_measured_peak_rss_of_a_training_process(
    tiny_models: Callable[[str], Path], family: str, color_pairs: Path
) -> None:
    model = tiny_models(family)
    config = {"kind": "train", "model": str(model), "data": str(color_pairs), "resolution": 64, "batch": 4}
    child = subprocess.run(
        [sys.executable, "-m", "bench.plan_coefficients", "--one", json.dumps(config)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    measured = json.loads(child.stdout.strip().splitlines()[-1])["peak_rss"]
    spec = TrainSpec(base_model=str(model), resolution=64, train_batch_size=4, lora_rank=4)
    estimated = plan(spec, read_base_model(model), this_device(CPU)).memory.peak_host
    assert abs(measured - estimated) <= PEAK_TOLERANCE * measured, (measured, estimated, RUNTIME_HOST_BYTES)

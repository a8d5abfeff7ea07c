"""The planner (trainer/plan.py): weights counted from safetensors headers, each precision's bytes, LoRA
and activations, `auto`, and the device classes. Checkpoints are written with safetensors' own numpy
writer, so the headers read are real ones."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from trainer.checkpoint_header import ComponentWeights, Linear, component_weights, read_header
from trainer.plan import (
    BaseModelWeights,
    DeviceClass,
    component_bytes,
    device_class,
    estimate,
    lora_parameters,
    plan,
    recipe_of,
    smallest_plan,
)
from trainer.spec import TrainSpec

GiB = 2**30
HIDDEN = 256
BLOCKS = 4


def _write(folder: Path, tensors: Mapping[str, tuple[int, ...]], name: str = "model.safetensors") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: np.zeros(shape, dtype=np.float16) for k, shape in tensors.items()}, str(folder / name))
    return folder


def _transformer_tensors() -> dict[str, tuple[int, ...]]:
    """A flow transformer's blocks: attention and MLP linears with biases, and norms."""
    tensors: dict[str, tuple[int, ...]] = {
        "x_embedder.weight": (HIDDEN, 64),
        "pos_embedding.weight": (64, HIDDEN),
    }
    for i in range(BLOCKS):
        block = f"transformer_blocks.{i}"
        for projection in ("to_q", "to_k", "to_v", "to_out.0"):
            tensors[f"{block}.attn.{projection}.weight"] = (HIDDEN, HIDDEN)
            tensors[f"{block}.attn.{projection}.bias"] = (HIDDEN,)
        tensors[f"{block}.ff.net.0.proj.weight"] = (4 * HIDDEN, HIDDEN)
        tensors[f"{block}.ff.net.2.weight"] = (HIDDEN, 4 * HIDDEN)
        tensors[f"{block}.norm1.weight"] = (HIDDEN,)
    return tensors


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> BaseModelWeights:
    root = tmp_path_factory.mktemp("model")
    text = {"embeddings.token_embedding.weight": (1000, 128), "encoder.layers.0.fc1.weight": (512, 128)}
    vae = {"encoder.conv_in.weight": (64, 3, 3, 3), "decoder.conv_out.weight": (3, 64, 3, 3)}
    return BaseModelWeights(
        family="flux",
        native_resolution=512,
        denoiser=component_weights(_write(root / "transformer", _transformer_tensors())),
        text_encoders=(component_weights(_write(root / "text_encoder", text)),),
        vae=component_weights(_write(root / "vae", vae)),
    )


def _spec(**fields: object) -> TrainSpec:
    defaults: dict[str, object] = {"base_model": "m", "mixed_precision": "bf16", "train_batch_size": 2}
    return TrainSpec.model_validate({**defaults, **fields})


def _gpu(memory_gib: float | None, model: str = "NVIDIA L4") -> DeviceClass:
    memory = None if memory_gib is None else int(memory_gib * GiB)
    return device_class(kind="cuda", gpu_model=model, memory_bytes=memory)


def test_the_header_is_read_without_the_weights_and_linears_are_told_from_tables_and_norms(
    tmp_path: Path,
) -> None:
    folder = _write(
        tmp_path / "text_encoder",
        {"embeddings.token_embedding.weight": (1000, 32), "fc.weight": (64, 32), "fc.bias": (64,)},
    )
    assert read_header(folder / "model.safetensors")["fc.weight"] == ("F16", (64, 32))
    counted = component_weights(folder)
    assert [(layer.name, layer.out_features, layer.in_features) for layer in counted.linears] == [
        ("fc", 64, 32)
    ]
    assert counted.other_elements == 1000 * 32 + 64


def test_a_dtype_variant_beside_the_plain_file_is_counted_once(tmp_path: Path) -> None:
    folder = _write(tmp_path / "unet", {"a.weight": (8, 8)}, "diffusion_pytorch_model.safetensors")
    _write(folder, {"a.weight": (8, 8)}, "diffusion_pytorch_model.fp16.safetensors")
    assert component_weights(folder).elements == 64


def test_quantized_linears_hold_their_bytes_plus_scales_and_the_rest_stays_in_the_compute_dtype() -> None:
    layer_only = ComponentWeights(
        linears=component_weights_of(1024, 4096), other_elements=0, largest_file_bytes=0
    )
    bf16 = component_bytes(layer_only, "bf16", "bf16", on_cpu=False)
    assert bf16 == 1024 * 4096 * 2
    assert component_bytes(layer_only, "int8", "bf16", on_cpu=False) == 1024 * 4096 + 1024 * 2
    nf4 = component_bytes(layer_only, "nf4", "bf16", on_cpu=False)
    assert nf4 == 1024 * 4096 // 2 + 1024 * 4096 // 64 + 4 * (1024 * 4096 // 64 // 256)
    with_norms = replace(layer_only, other_elements=1000)
    assert component_bytes(with_norms, "nf4", "bf16", on_cpu=False) == nf4 + 2000


def component_weights_of(out_features: int, in_features: int) -> tuple[Linear, ...]:
    return (Linear("block.to_q", out_features, in_features),)


def test_int8_and_nf4_bases_meet_the_issues_ratios_of_bf16(weights: BaseModelWeights) -> None:
    def denoiser(precision: str) -> int:
        return component_bytes(weights.denoiser, precision, "bf16", on_cpu=False)

    assert denoiser("int8") <= 0.55 * denoiser("bf16")
    assert denoiser("nf4") <= 0.32 * denoiser("bf16")


def test_nf4_on_the_cpu_keeps_layers_whose_input_is_no_multiple_of_64_in_float() -> None:
    odd = ComponentWeights(linears=component_weights_of(128, 100), other_elements=0, largest_file_bytes=0)
    assert component_bytes(odd, "nf4", "fp32", on_cpu=True) == 128 * 100 * 4
    assert component_bytes(odd, "nf4", "fp32", on_cpu=False) < 128 * 100


def test_lora_counts_rank_times_in_plus_out_of_the_targeted_linears_only(weights: BaseModelWeights) -> None:
    assert lora_parameters(_spec(lora_rank=4), weights) == BLOCKS * 4 * 4 * (HIDDEN + HIDDEN)
    only_q = _spec(lora_rank=8, lora_target_modules=["to_q"])
    assert lora_parameters(only_q, weights) == BLOCKS * 8 * (HIDDEN + HIDDEN)


def test_mapo_needs_no_more_than_dpo_and_sft_trains_half_the_images(weights: BaseModelWeights) -> None:
    device = _gpu(None)
    peaks = {
        method: plan(_spec(method=method, resolution=1024, train_batch_size=8), weights, device)
        for method in ("mapo", "dpo", "sft")
    }
    assert peaks["mapo"].memory.peak_device <= peaks["dpo"].memory.peak_device
    assert peaks["sft"].memory.activations * 2 == pytest.approx(peaks["mapo"].memory.activations, abs=2)
    assert peaks["dpo"].step_seconds > peaks["mapo"].step_seconds  # type: ignore[operator]


def test_checkpointing_keeps_fewer_activations_and_costs_a_forward(weights: BaseModelWeights) -> None:
    plain = plan(_spec(resolution=1024), weights, _gpu(None))
    checkpointed = plan(_spec(resolution=1024, gradient_checkpointing=True), weights, _gpu(None))
    assert checkpointed.memory.activations < plain.memory.activations
    assert checkpointed.step_seconds == pytest.approx(plain.step_seconds * 4 / 3)  # type: ignore[operator]


def test_text_encoders_leave_the_step_with_the_cache_and_stay_without_it(weights: BaseModelWeights) -> None:
    big_batch = {"resolution": 1024, "train_batch_size": 16}
    cached = plan(_spec(**big_batch), weights, _gpu(None))
    uncached = plan(_spec(**big_batch, cache_latents=False), weights, _gpu(None))
    assert uncached.memory.peak_device - cached.memory.peak_device == cached.memory.text_encoders


def test_auto_picks_the_least_lossy_precision_that_fits(weights: BaseModelWeights) -> None:
    """On an A10G (Ampere: no float8), so the candidates are bf16, int8 and nf4."""
    spec = _spec(base_precision="auto", resolution=256)
    sizes = {
        precision: estimate(
            spec, weights, _gpu(None), replace(recipe_of(spec, weights, "cuda"), base_precision=precision)
        ).memory.peak_device
        for precision in ("bf16", "int8", "nf4")
    }
    assert sizes["nf4"] < sizes["int8"] < sizes["bf16"]
    for budget, expected in ((sizes["bf16"], "bf16"), (sizes["int8"], "int8"), (sizes["nf4"], "nf4")):
        device = device_class(kind="cuda", gpu_model="NVIDIA A10G", memory_bytes=budget)
        chosen = plan(spec, weights, device)
        assert (chosen.recipe.base_precision, chosen.fits) == (expected, True)
    too_small = plan(
        spec, weights, device_class(kind="cuda", gpu_model="A10G", memory_bytes=sizes["nf4"] - 1)
    )
    assert (too_small.recipe.base_precision, too_small.fits) == ("nf4", False)


def test_auto_tries_fp8_only_on_a_class_with_float8_tensor_cores(weights: BaseModelWeights) -> None:
    spec = _spec(base_precision="auto", resolution=256)
    bf16 = plan(spec, weights, _gpu(None)).memory.peak_device
    assert (
        plan(spec, weights, _gpu(bf16 / GiB - 1e-6, "NVIDIA H100 80GB HBM3")).recipe.base_precision == "fp8"
    )
    assert (
        plan(spec, weights, _gpu(bf16 / GiB - 1e-6, "NVIDIA A100-SXM4-80GB")).recipe.base_precision == "int8"
    )


def test_a_spec_that_names_its_precision_is_planned_as_it_is(weights: BaseModelWeights) -> None:
    planned = plan(_spec(base_precision="bf16"), weights, _gpu(1e-6))
    assert (planned.recipe.base_precision, planned.fits) == ("bf16", False)
    assert smallest_plan(_spec(), weights, _gpu(None)).recipe.base_precision == "nf4"


def test_the_cpu_computes_in_float32_whatever_the_mixed_precision(weights: BaseModelWeights) -> None:
    cpu = device_class(kind="cpu", gpu_model=None, memory_bytes=None)
    planned = plan(_spec(mixed_precision="bf16"), weights, cpu)
    assert planned.recipe.base_precision == "fp32"
    assert planned.memory.peak_device == planned.memory.peak_host


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA A10G", "A10G"),
    ],
)
def test_a_gpu_model_names_its_class_by_the_longest_match(model: str, expected: str) -> None:
    assert device_class(kind="cuda", gpu_model=model, memory_bytes=None).name == expected


def test_an_unknown_gpu_is_its_own_class_of_unknown_speed(weights: BaseModelWeights) -> None:
    unknown = device_class(kind="cuda", gpu_model="Some Accelerator 9000", memory_bytes=None)
    assert (unknown.name, unknown.effective_tflops) == ("Some Accelerator 9000", None)
    assert plan(_spec(), weights, unknown).total_seconds is None


def test_total_time_is_steps_times_step_time(weights: BaseModelWeights) -> None:
    planned = plan(_spec(max_train_steps=100), weights, _gpu(None))
    assert planned.total_seconds == pytest.approx(100 * planned.step_seconds)  # type: ignore[operator]


def test_cuda_keeps_fewer_activations_than_the_cpus_unfused_attention(weights: BaseModelWeights) -> None:
    spec = _spec(
        resolution=512, mixed_precision="no"
    )  # float32 on both devices: only the coefficient differs
    cpu = device_class(kind="cpu", gpu_model=None, memory_bytes=None)
    for family in ("flux", "sdxl"):
        model = replace(weights, family=family)
        on_cpu, on_gpu = plan(spec, model, cpu).memory, plan(spec, model, _gpu(None)).memory
        assert on_gpu.activations < on_cpu.activations

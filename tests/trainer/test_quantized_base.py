"""Training on a quantized frozen base (QLoRA): `base_precision` int8 (torchao) and nf4 (bitsandbytes),
through diffusers' own quantization configs, on the CPU kernels both libraries ship.

On the CPU, bitsandbytes packs 4-bit weights in blocks of 64 input features, so the tiny models' 32-wide
layers stay in float32 there (trainer/quantization.py); the ones it can pack are quantized and the tests
check exactly that split.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

from tests.support.specs import tiny_spec
from trainer.errors import PrecisionUnavailableError
from trainer.events import Event, Started, Step
from trainer.families.registry import load_family
from trainer.loop import train
from trainer.quantization import meta_diffusers_model, not_packable_on_cpu

CPU = torch.device("cpu")
PRECISIONS = ["int8", "nf4"]


def _linears(module: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    return {name: m for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)}


def _is_quantized_layer(layer: torch.nn.Linear) -> bool:
    """bitsandbytes swaps the layer class; torchao swaps the weight's tensor class."""
    return type(layer).__name__ == "Linear4bit" or type(layer.weight.data) is not torch.Tensor


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_quantized_base_holds_each_denoiser_linear_layer_the_cpu_kernels_can_take_quantized(
    tiny_model: Path, precision: str
) -> None:
    model = load_family(str(tiny_model), device=CPU, weight_dtype=torch.float32, base_precision=precision)
    layers = _linears(model.denoiser)
    meta = meta_diffusers_model(type(model.denoiser), str(tiny_model), model.facts.denoiser)
    kept_float = set(not_packable_on_cpu(meta)) if precision == "nf4" else set()

    quantized = {name for name, layer in layers.items() if _is_quantized_layer(layer)}
    assert quantized == set(layers) - kept_float
    assert quantized, "a base with nothing quantized would test nothing"
    assert not any(p.requires_grad for p in model.denoiser.parameters())


def _train(spec_base: Path, dataset: Path, out: Path, **fields: object) -> tuple[object, list[Event]]:
    events: list[Event] = []
    result = train(tiny_spec(spec_base, **fields), dataset, out, on_event=events.append)
    return result, events


def _metric(events: list[Event], name: str) -> list[float]:
    return [e.metrics[name] for e in events if isinstance(e, Step)]


# How far step 1's denoising error may move from the float base's. Step 1 comes before any update, so
# the two differ only by the quantization error of the frozen weights: int8 rounds each weight to 1/254
# of its row's largest, nf4 to one of 16 levels per block of 64 (up to ~7% of the block's largest), and
# through the tiny random models' stacked layers that grows (sdxl nf4: 11% seen).
STEP_ONE_TOLERANCE = {"int8": 0.05, "nf4": 0.25}
FLOAT_STEP_ONE: dict[str, float] = {}  # per family, measured once for both precisions
FEW_STEPS = {"max_train_steps": 2, "checkpoint_every_n_steps": 2}


def _float_step_one(family: str, base: Path, dataset: Path, out: Path) -> float:
    if family not in FLOAT_STEP_ONE:
        _, events = _train(base, dataset, out, **FEW_STEPS)
        FLOAT_STEP_ONE[family] = _metric(events, "chosen_loss")[0]
    return FLOAT_STEP_ONE[family]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_mapo_trains_every_family_on_a_quantized_base_from_about_the_float_error(
    family_name: str, tiny_model: Path, precision: str, color_pairs: Path, tmp_path: Path
) -> None:
    float_error = _float_step_one(family_name, tiny_model, color_pairs, tmp_path / "float")
    result, events = _train(
        tiny_model, color_pairs, tmp_path / precision, base_precision=precision, **FEW_STEPS
    )

    losses = _metric(events, "loss")
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[0] != losses[1], "the loss moves"
    tolerance = STEP_ONE_TOLERANCE[precision]
    assert _metric(events, "chosen_loss")[0] == pytest.approx(float_error, rel=tolerance)
    started = next(e for e in events if isinstance(e, Started))
    assert started.base_precision == precision
    assert result.adapter_path is not None  # type: ignore[attr-defined]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("method", ["dpo", "sft"])
def test_dpo_and_sft_train_on_a_quantized_unet_and_transformer(
    tiny_sdxl: Path, tiny_flux: Path, precision: str, method: str, color_pairs: Path, tmp_path: Path
) -> None:
    # DPO with checkpointing: its reference is a pass of its own (not folded into the policy's) in inference
    # mode, the first call of each quantized layer: where bitsandbytes would repack a 4-bit weight for
    # inference (trainer/families/loading.py keeps it from doing so).
    for base in (tiny_sdxl, tiny_flux):
        _, events = _train(
            base,
            color_pairs,
            tmp_path / base.name,
            method=method,
            base_precision=precision,
            max_train_steps=2,
            gradient_checkpointing=method == "dpo",
        )
        losses = _metric(events, "loss")
        assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_a_quantized_run_resumes_where_it_stopped(
    tiny_models: Callable[[str], Path], color_pairs: Path, tmp_path: Path
) -> None:
    spec = tiny_spec(
        tiny_models("flux2"), base_precision="nf4", max_train_steps=4, checkpoint_every_n_steps=2
    )
    seen: list[Event] = []
    first = train(
        spec, color_pairs, tmp_path, on_event=seen.append, should_stop=lambda: len(_metric(seen, "loss")) >= 2
    )
    assert first.stopped and first.final_step == 2

    events: list[Event] = []
    result = train(spec, color_pairs, tmp_path, on_event=events.append)
    assert next(e for e in events if isinstance(e, Started)).resumed_from_step == 2
    assert [e.step for e in events if isinstance(e, Step)] == [3, 4] and result.final_step == 4


@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_adapter_of_a_quantized_base_is_float_and_loads_on_the_unquantized_base(
    tiny_sd: Path, precision: str, color_pairs: Path, tmp_path: Path
) -> None:
    result, _ = _train(tiny_sd, color_pairs, tmp_path, base_precision=precision, learning_rate=5e-2)
    adapter = result.adapter_path  # type: ignore[attr-defined]
    assert all(t.dtype == torch.float32 for t in load_file(str(adapter)).values())

    pipeline = DiffusionPipeline.from_pretrained(str(tiny_sd), safety_checker=None)
    pipeline.set_progress_bar_config(disable=True)

    def draw() -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        out = pipeline("a red circle", num_inference_steps=2, height=32, width=32, generator=generator)
        return torch.tensor(list(out.images[0].getdata()), dtype=torch.float32)

    before = draw()
    pipeline.load_lora_weights(str(adapter.parent), weight_name=adapter.name)
    assert not torch.equal(draw(), before), "the adapter changes what the float base draws"


def test_fp8_is_refused_on_a_machine_without_a_recent_cuda_gpu_naming_the_field_and_device(
    tiny_sd: Path, color_pairs: Path, tmp_path: Path
) -> None:
    with pytest.raises(PrecisionUnavailableError, match=r"base_precision fp8 .* device is cpu"):
        train(tiny_spec(tiny_sd, base_precision="fp8"), color_pairs, tmp_path, on_event=lambda event: None)


@pytest.mark.parametrize("method", ["mapo", "dpo"])
def test_every_lora_layer_on_a_4bit_base_learns_from_the_first_step(
    tiny_sd: Path, method: str, color_pairs: Path, tmp_path: Path
) -> None:
    """B starts at zero, so after one AdamW step a LoRA layer's B is non-zero exactly when its gradient
    was: every adapted layer gets one through the 4-bit layers after it."""
    result, _ = _train(tiny_sd, color_pairs, tmp_path, method=method, base_precision="nf4", max_train_steps=1)
    adapter = load_file(str(result.adapter_path))  # type: ignore[attr-defined]
    ups = {
        name: tensor for name, tensor in adapter.items() if name.endswith(("lora_B.weight", "lora.up.weight"))
    }
    assert ups and all(tensor.abs().sum() > 0 for tensor in ups.values()), [
        name for name, tensor in ups.items() if tensor.abs().sum() == 0
    ]

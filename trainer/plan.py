"""A plan before the job: the memory, time and cost a TrainSpec will take on a device class, and the
recipe `auto` resolves to. Torch-free: the API (whose image has no torch) and the trainer use the same
planner, so what `POST /v1/jobs/estimate` promises is what a worker decides at load time.

How the estimate is made (docs/memory.md, "How the plan is made"):
* weights: counted from the base model's safetensors headers (trainer/checkpoint_header.py), each linear
  layer at the bytes of its precision plus its quantization scales, everything else (norms, biases,
  convolutions, embeddings) in the compute dtype, the VAE in float32;
* LoRA: rank x (in + out) per targeted linear, in float32, with its gradient and AdamW's two moments;
* activations: a per-family coefficient (bench/plan_coefficients.py measures it) times the latent pixels
  times the sum of the denoiser's linear output widths, per image trained (2 per pair for MaPO/DPO);
* time: forward FLOPs (2 x multiply-adds of the linear layers per token) x 3 for forward and backward
  (x 4 with gradient checkpointing, DPO adds a forward of the reference), over a device class's
  effective throughput.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Literal

from trainer.checkpoint_header import ComponentWeights, Linear, component_weights
from trainer.families import FAMILIES, MODEL_INDEX, FamilyName, read_family
from trainer.families.describe import describe_model
from trainer.spec import TrainSpec

DeviceKind = Literal["cpu", "cuda"]
GiB = 2**30
FLOAT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# Bytes of one weight of a linear layer at each precision, before its scales (see `linear_bytes`).
BYTES_PER_WEIGHT = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "nf4": 0.5, "fp8": 1.0}
NF4_BLOCK = 64  # bitsandbytes' 4-bit block: one absmax per 64 weights
NF4_DOUBLE_QUANT_BLOCK = 256  # double quantization: the absmaxes in 8 bits, one float32 per 256 of them
CPU_4BIT_BLOCK = 64  # bitsandbytes' CPU kernel packs input features in blocks of 64 (quantization.py)
# Least lossy first: what `auto` tries in turn. fp8 only where the device class has float8 tensor cores.
AUTO_ORDER = ("float", "fp8", "int8", "nf4")
LORA_BYTES_PER_PARAMETER = 4 * 4  # float32 weight, gradient and AdamW's two moments
# Measured by bench/plan_coefficients.py on the small presets at 128 px (CPU, float32; docs/memory.md):
# activation bytes kept for backward per image = coefficient x latent pixels x sum of the denoiser's linear
# output widths x the compute dtype's bytes. Gradient checkpointing keeps the blocks' inputs only: its
# share is assumed, not measured.
ACTIVATION_COEFFICIENT: dict[FamilyName, float] = {
    "sd": 0.363,
    "sdxl": 0.353,
    "sd3": 1.108,
    "flux": 2.636,
    "flux2": 4.891,
    "z_image": 1.259,
    "qwen_image": 0.46,
    "chroma": 4.715,
}
# On CUDA a flow transformer's attention is fused (SDPA) and keeps no tokens x tokens matrix, which the
# CPU's measured coefficients include: there a transformer keeps about 34 bytes x tokens x hidden per block
# at 16 bits (Korthikanti et al. 2022, without the attention-matrix term), and a block's linear output
# widths sum to about 30 x hidden, with a token per 4 latent pixels: 34 / 30 / 4 / 2 bytes = 0.14.
# Derived, not measured. A UNet's on CUDA is fitted to the one real-size GPU peak on record
# (docs/benchmarks.md: SDXL, 1024 px, MaPO cached, batch 2, checkpointing, H100: 19.1 GB), with the
# checkpointing share below folded in.
CUDA_TRANSFORMER_ACTIVATION_COEFFICIENT = 0.14
CUDA_UNET_ACTIVATION_COEFFICIENT = 0.194
CHECKPOINTED_ACTIVATION_SHARE = 0.3
# What the process holds besides the model: on the host, a training process's floor (the imports alone
# are 514 MiB of RSS; the data loader, accelerate and the kernels' buffers bring it to about 600 MiB,
# fitted to bench/plan_coefficients' small-preset peaks); on a GPU, the CUDA context and allocator slack.
RUNTIME_HOST_BYTES = 600 * 2**20
CUDA_RESERVED_BYTES = int(1.0 * GiB)
# A UNet runs most of its parameters on downsampled feature maps: its forward FLOPs per latent pixel are
# about this share of 2 x parameters (SDXL: 4.9 TFLOP per 1024 px image, from FlopCounterMode's 78.4
# TFLOP per checkpointed step of 4 images in docs/benchmarks.md); a flow transformer runs every linear on
# every token of its 2x2 patches.
UNET_PIXEL_SHARE = 0.058
TRANSFORMER_PIXELS_PER_TOKEN = 4
# Effective training throughput (TFLOP/s): the bf16 dense tensor-core peak of each class's datasheet
# times the share a LoRA step reaches: 9.8% measured on an H100 (docs/benchmarks.md: real-size SDXL MaPO
# cached at 1024 px, 97 TFLOP/s), taken for every class.
# The CPU's: the small SDXL's MaPO cached step at 128 px in docs/benchmarks.md (403 ms for ~9.3 GFLOP).
GPU_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
    "V100": 125.0,
    "T4": 65.0,
}
GPU_STEP_UTILIZATION = 0.098
CPU_EFFECTIVE_TFLOPS = 0.023
FP8_CLASSES = frozenset({"H200", "H100", "L40S", "L40", "L4", "RTX 4090"})
# Default LoRA targets per family, as the families' `default_lora_targets` (a test holds them equal).
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
JOINT_ATTENTION = (*ATTENTION, "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
DEFAULT_LORA_TARGETS: dict[FamilyName, tuple[str, ...]] = {
    "sd": ATTENTION,
    "sdxl": ATTENTION,
    "z_image": ATTENTION,
    "flux2": (*JOINT_ATTENTION, "to_qkv_mlp_proj", "attn.to_out"),
}


class PlanUnavailableError(ValueError):
    """The base model cannot be planned for: no local folder, or weights that are not safetensors."""


@dataclass(frozen=True)
class DeviceClass:
    """A kind of device a worker trains on: `memory_bytes` per device (None: not advertised)."""

    name: str
    kind: DeviceKind
    memory_bytes: int | None
    effective_tflops: float | None
    fp8: bool = False


@dataclass(frozen=True)
class BaseModelWeights:
    """What the planner needs of a base model, read from its folder's JSON and safetensors headers."""

    family: FamilyName
    native_resolution: int
    denoiser: ComponentWeights
    text_encoders: tuple[ComponentWeights, ...]
    vae: ComponentWeights


@dataclass(frozen=True)
class Recipe:
    """The settings that decide a job's memory: what `auto` resolves and `does_not_fit` suggests."""

    base_precision: str
    text_encoder_precision: str
    gradient_checkpointing: bool
    cache_latents: bool
    train_batch_size: int
    resolution: int


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes, per device: the peak is that of the training step (text encoders freed after caching) or of
    loading (every component at once), whichever is larger."""

    denoiser: int
    text_encoders: int
    vae: int
    lora_training_state: int
    activations: int
    runtime: int
    peak_device: int
    peak_host: int


@dataclass(frozen=True)
class Plan:
    recipe: Recipe
    memory: MemoryEstimate
    device: DeviceClass
    step_seconds: float | None
    total_seconds: float | None
    fits: bool | None  # None: the device class advertises no memory


def read_base_model(folder: Path) -> BaseModelWeights:
    """The weights of the diffusers folder `folder` (cached per model_index.json's modification time)."""
    index = folder / MODEL_INDEX
    stamp = index.stat().st_mtime_ns if index.is_file() else 0
    return _read_base_model(str(folder), stamp)


@lru_cache(maxsize=64)
def _read_base_model(folder: str, _stamp: int) -> BaseModelWeights:
    path = Path(folder)
    description = describe_model(folder)
    if description is None or description.native_resolution is None:
        raise PlanUnavailableError(f"{folder} is no diffusers folder of a family we train")
    family = read_family(path)
    try:
        return BaseModelWeights(
            family=family,
            native_resolution=description.native_resolution,
            denoiser=component_weights(path / FAMILIES[family].denoiser),
            text_encoders=tuple(component_weights(path / name) for name in _text_encoder_folders(path)),
            vae=component_weights(path / "vae"),
        )
    except (OSError, ValueError) as exc:
        raise PlanUnavailableError(f"cannot count the weights of {folder}: {exc}") from exc


def _text_encoder_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("text_encoder"))


def device_class(*, kind: DeviceKind, gpu_model: str | None, memory_bytes: int | None) -> DeviceClass:
    """The class of a worker's device: the GPU table's entry its model names (the longest match), or the
    model's own name with unknown throughput; "cpu" for a CPU worker."""
    if kind == "cpu":
        return DeviceClass("cpu", "cpu", memory_bytes, CPU_EFFECTIVE_TFLOPS)
    model = gpu_model or "unknown GPU"
    matches = sorted((name for name in GPU_PEAK_TFLOPS if name in model), key=len, reverse=True)
    if not matches:
        return DeviceClass(model, "cuda", memory_bytes, None)
    name = matches[0]
    tflops = GPU_PEAK_TFLOPS[name] * GPU_STEP_UTILIZATION
    return DeviceClass(name, "cuda", memory_bytes, tflops, fp8=name in FP8_CLASSES)


def compute_precision(spec: TrainSpec, kind: DeviceKind) -> str:
    """What the frozen parts compute in: the mixed-precision dtype on CUDA, float32 on the CPU."""
    if kind == "cpu" or spec.mixed_precision == "no":
        return "fp32"
    return spec.mixed_precision


def recipe_of(spec: TrainSpec, weights: BaseModelWeights, kind: DeviceKind) -> Recipe:
    """The spec's own recipe on a device kind (`auto` resolved to the float compute dtype)."""
    compute = compute_precision(spec, kind)
    base = spec.base_precision if spec.base_precision not in (None, "auto") else compute
    return Recipe(
        base_precision=base,
        text_encoder_precision=spec.text_encoder_precision or compute,
        gradient_checkpointing=spec.gradient_checkpointing,
        cache_latents=spec.latent_cache()[0],
        train_batch_size=spec.train_batch_size,
        resolution=spec.resolution or weights.native_resolution,
    )


def plan(spec: TrainSpec, weights: BaseModelWeights, device: DeviceClass) -> Plan:
    """The plan of `spec` on `device`; `base_precision: auto` becomes the least lossy precision that fits
    (the smallest, nf4, with `fits` False when none does)."""
    recipe = recipe_of(spec, weights, device.kind)
    if spec.base_precision != "auto":
        return estimate(spec, weights, device, recipe)
    tried = estimate(spec, weights, device, recipe)
    for precision in _auto_candidates(recipe, device):
        tried = estimate(spec, weights, device, replace(recipe, base_precision=precision))
        if tried.fits is not False:
            return tried
    return tried


def _auto_candidates(recipe: Recipe, device: DeviceClass) -> list[str]:
    names = [recipe.base_precision if name == "float" else name for name in AUTO_ORDER]
    return [name for name in names if name != "fp8" or device.fp8]


def smallest_plan(spec: TrainSpec, weights: BaseModelWeights, device: DeviceClass) -> Plan:
    """The least memory this job can train in on `device`: an nf4 base and text encoders, gradient
    checkpointing, the cache on (its batch size and resolution are the spec's: they change the result)."""
    recipe = recipe_of(spec, weights, device.kind)
    smallest = replace(
        recipe, base_precision="nf4", text_encoder_precision="nf4", gradient_checkpointing=True
    )
    return estimate(spec, weights, device, replace(smallest, cache_latents=not spec.random_crop))


def estimate(spec: TrainSpec, weights: BaseModelWeights, device: DeviceClass, recipe: Recipe) -> Plan:
    """Memory, step time and total time of `recipe` (the spec's method, LoRA and steps) on `device`."""
    memory = memory_estimate(spec, weights, device, recipe)
    step = step_seconds(spec, weights, device, recipe)
    budget = device.memory_bytes
    fits = None if budget is None else memory.peak_device <= budget
    total = None if step is None else step * spec.max_train_steps
    return Plan(recipe, memory, device, step, total, fits)


def memory_estimate(
    spec: TrainSpec, weights: BaseModelWeights, device: DeviceClass, recipe: Recipe
) -> MemoryEstimate:
    compute = compute_precision(spec, device.kind)
    on_cpu = device.kind == "cpu"
    denoiser = component_bytes(weights.denoiser, recipe.base_precision, compute, on_cpu=on_cpu)
    text = sum(
        component_bytes(encoder, recipe.text_encoder_precision, compute, on_cpu=on_cpu)
        for encoder in weights.text_encoders
    )
    vae = weights.vae.elements * FLOAT_BYTES["fp32"]
    lora = lora_parameters(spec, weights) * LORA_BYTES_PER_PARAMETER
    activations = activation_bytes(spec, weights, recipe, device.kind)
    # With the cache on, the text encoders encode at the start and are freed before the first step.
    step_text = 0 if recipe.cache_latents else text
    # Loading holds every component and, while one is built, its checkpoint's largest file read whole.
    loading = denoiser + text + vae + _largest_file(weights)
    training = denoiser + step_text + vae + lora + activations
    if on_cpu:
        peak = max(loading, training) + RUNTIME_HOST_BYTES
        return MemoryEstimate(denoiser, text, vae, lora, activations, RUNTIME_HOST_BYTES, peak, peak)
    peak_device = max(denoiser + text + vae, training) + CUDA_RESERVED_BYTES
    peak_host = RUNTIME_HOST_BYTES + loading  # components load on the host before they move
    return MemoryEstimate(denoiser, text, vae, lora, activations, CUDA_RESERVED_BYTES, peak_device, peak_host)


def _largest_file(weights: BaseModelWeights) -> int:
    components = (weights.denoiser, weights.vae, *weights.text_encoders)
    return max(component.largest_file_bytes for component in components)


def component_bytes(weights: ComponentWeights, precision: str, compute: str, *, on_cpu: bool) -> int:
    """Resident bytes of a component: its linears at `precision`, the rest in the compute dtype."""
    other = weights.other_elements * FLOAT_BYTES[compute]
    return other + sum(linear_bytes(layer, precision, compute, on_cpu=on_cpu) for layer in weights.linears)


def linear_bytes(layer: Linear, precision: str, compute: str, *, on_cpu: bool) -> int:
    """One linear weight at `precision`, with its scales: int8 and fp8 keep one scale per output row in
    the compute dtype, nf4 one 8-bit absmax per 64 weights and a float32 per 256 of those."""
    if precision == "nf4" and on_cpu and layer.in_features % CPU_4BIT_BLOCK:
        precision = compute  # bitsandbytes' CPU kernel cannot pack it: it stays float
    data = layer.weights * BYTES_PER_WEIGHT[precision]
    if precision in ("int8", "fp8"):
        return int(data) + layer.out_features * FLOAT_BYTES[compute]
    if precision == "nf4":
        blocks = -(-layer.weights // NF4_BLOCK)
        return int(data) + blocks + 4 * -(-blocks // NF4_DOUBLE_QUANT_BLOCK)
    return int(data)


def lora_targets(spec: TrainSpec, family: FamilyName) -> tuple[str, ...]:
    if spec.lora_target_modules:
        return tuple(spec.lora_target_modules)
    if family in DEFAULT_LORA_TARGETS:
        return DEFAULT_LORA_TARGETS[family]
    return JOINT_ATTENTION


def lora_parameters(spec: TrainSpec, weights: BaseModelWeights) -> int:
    """rank x (in + out) for every denoiser linear whose name ends with a target (peft's suffix match)."""
    targets = lora_targets(spec, weights.family)
    return sum(
        spec.lora_rank * (layer.in_features + layer.out_features)
        for layer in weights.denoiser.linears
        if any(layer.name == t or layer.name.endswith(f".{t}") for t in targets)
    )


def images_per_step(spec: TrainSpec, recipe: Recipe) -> int:
    """Images the denoiser trains on per micro-step: both of a pair for MaPO and DPO, the chosen for SFT."""
    return recipe.train_batch_size * (1 if spec.method == "sft" else 2)


def latent_pixels(resolution: int) -> int:
    return (resolution // 8) ** 2


def activation_bytes(spec: TrainSpec, weights: BaseModelWeights, recipe: Recipe, kind: DeviceKind) -> int:
    """What the step keeps for backward: per image, the family's coefficient on `kind` x latent pixels x
    the sum of the denoiser's linear output widths x the compute dtype's bytes."""
    widths = sum(layer.out_features for layer in weights.denoiser.linears)
    per_image = activation_coefficient(weights.family, kind) * latent_pixels(recipe.resolution) * widths
    per_image *= FLOAT_BYTES[compute_precision(spec, kind)]
    if recipe.gradient_checkpointing:
        per_image *= CHECKPOINTED_ACTIVATION_SHARE
    return int(per_image * images_per_step(spec, recipe))


def activation_coefficient(family: FamilyName, kind: DeviceKind) -> float:
    if kind == "cpu":
        return ACTIVATION_COEFFICIENT[family]
    if FAMILIES[family].denoiser == "unet":
        return CUDA_UNET_ACTIVATION_COEFFICIENT
    return min(CUDA_TRANSFORMER_ACTIVATION_COEFFICIENT, ACTIVATION_COEFFICIENT[family])


def forward_flops(weights: BaseModelWeights, resolution: int) -> float:
    """FLOPs of one image's denoiser forward (2 per multiply-add)."""
    pixels = latent_pixels(resolution)
    if FAMILIES[weights.family].denoiser == "unet":
        return 2.0 * weights.denoiser.elements * pixels * UNET_PIXEL_SHARE
    return 2.0 * weights.denoiser.linear_elements * pixels / TRANSFORMER_PIXELS_PER_TOKEN


def step_flops(spec: TrainSpec, weights: BaseModelWeights, recipe: Recipe) -> float:
    """One optimizer step: forward and backward (a second forward when checkpointing) of every trained
    image, DPO's reference forward of both images, over the accumulation's micro-steps."""
    forward = forward_flops(weights, recipe.resolution)
    passes = 4 if recipe.gradient_checkpointing else 3
    images = images_per_step(spec, recipe)
    reference = images if spec.method == "dpo" else 0
    return forward * (images * passes + reference) * spec.gradient_accumulation_steps


def step_seconds(
    spec: TrainSpec, weights: BaseModelWeights, device: DeviceClass, recipe: Recipe
) -> float | None:
    if device.effective_tflops is None:
        return None
    return step_flops(spec, weights, recipe) / (device.effective_tflops * 1e12)

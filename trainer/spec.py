"""The training specification: what to train, on what, and how. No torch here.

`TrainSpec` is shared by the API (which validates a job body against it, so that a bad spec is a 422 and
never a crash on the GPU) and the trainer (which runs it). Defaults follow the MaPO reference recipe
(SDXL, LoRA rank 8, lr 1e-5, batch 8 x accumulation 2, beta 0.1, gamma 0.5); see docs in MAPO.md.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from trainer.families import FAMILIES, FAMILY_SPECIFIC_FIELDS, FamilyName, families_of, families_taking

Method = Literal["mapo", "dpo", "sft"]
# numpy seeds with 32 bits and the job's row stores the seed as an INTEGER: the smaller of the two.
MAX_SEED = 2**31 - 1
MAX_STEPS = 1_000_000
MAX_PROMPT_CHARS = 2000
MAX_MODULE_NAME_CHARS = 200
# Every float of a spec is finite: inf or nan would pass a bound and then train on nonsense.
FINITE = ConfigDict(extra="forbid", allow_inf_nan=False)
MixedPrecision = Literal["no", "fp16", "bf16"]
# How a frozen component's weights are held (trainer/quantization.py): a float dtype, or quantized weights
# that compute in the mixed-precision dtype; "auto" lets the plan pick (trainer/plan.py).
BasePrecision = Literal["auto", "fp32", "bf16", "fp16", "int8", "nf4", "fp8"]
TextEncoderPrecision = Literal["fp32", "bf16", "fp16", "int8", "nf4"]
LRScheduler = Literal["constant", "constant_with_warmup", "linear", "cosine"]
# The flow families' noise-level schemes (trainer/families/flow.py reads them; no torch here).
WeightingScheme = Literal["logit_normal", "mode", "uniform", "sigma_sqrt", "cosmap"]


class SpecConflict(ValueError):
    """A combination of fields is invalid; `field` is the dotted name to report (pydantic keeps this
    exception in the error's `ctx["error"]`, since model-level errors carry no location)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class ValidationSpec(BaseModel):
    """Validation images generated during training, with and without the LoRA, from a fixed seed."""

    model_config = FINITE

    prompts: list[Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]] = Field(
        default_factory=list,
        max_length=16,
        description="Prompts to render; empty disables validation images.",
    )
    every_n_steps: int | None = Field(
        default=None,
        ge=1,
        le=MAX_STEPS,
        description="Render every N optimizer steps (and always at the end); None renders only at the end.",
    )
    num_inference_steps: int = Field(default=25, ge=1, le=200, description="Denoising steps per image.")
    guidance_scale: float = Field(default=5.0, ge=0.0, le=30.0, description="Classifier-free guidance scale.")
    seed: int = Field(
        default=0, ge=0, le=MAX_SEED, description="Seed of the sampling noise; fixed so images compare."
    )

    @model_validator(mode="after")
    def _prompts_needed_for_schedule(self) -> Self:
        if self.every_n_steps is not None and not self.prompts:
            raise SpecConflict(
                "validation.every_n_steps", "validation.every_n_steps is set but validation.prompts is empty"
            )
        if any(not p.strip() for p in self.prompts):
            raise SpecConflict("validation.prompts", "validation.prompts must not contain empty prompts")
        return self


class GenerationSpec(BaseModel):
    """How the base model draws the missing side of a targets or avoid dataset's pairs at job start.

    Each image comes from its own seed, derived from the dataset and the pair's index, at the job's
    `resolution`. The images are stored with the dataset under a key of these settings and the base
    model, so a resumed job, or any later job with the same base model and settings, reuses them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    num_inference_steps: int = Field(default=25, ge=1, le=200, description="Denoising steps per image.")
    guidance_scale: float = Field(default=5.0, ge=0.0, le=30.0, description="Classifier-free guidance scale.")


class TrainSpec(BaseModel):
    """Everything the trainer needs besides the dataset and an output directory.

    Invalid combinations raise `pydantic.ValidationError` whose message names the offending field.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    base_model: str = Field(
        min_length=1,
        max_length=1000,
        description="Diffusers folder (local path) or hub id of a base model of one of the families "
        f"({', '.join(facts.label for facts in FAMILIES.values())}); its family is read from its "
        "model_index.json.",
        examples=["stabilityai/stable-diffusion-xl-base-1.0"],
    )
    method: Method = Field(
        default="mapo",
        description="mapo: margin-aware, reference-free; dpo: Diffusion-DPO (frozen reference = the base "
        "model); sft: denoising loss on the chosen images only.",
    )
    resolution: int | None = Field(
        default=None,
        ge=16,
        le=4096,
        description="Training square size in pixels, a multiple of 8. None uses the base model's native "
        "size (1024 for SDXL as in the reference recipe, 512 for SD 1.5).",
    )
    train_batch_size: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Pairs per device (per process) per micro-step. Pairs per optimizer step, the effective "
        "batch: train_batch_size x gpus x gradient_accumulation_steps.",
    )
    gradient_accumulation_steps: int = Field(
        default=2,
        ge=1,
        le=1024,
        description="Micro-steps per optimizer step (on each device; see train_batch_size).",
    )
    gpus: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Devices (one process each) that train this job data-parallel on one machine: each "
        "process trains on its own share of the pairs with its own noise, and the gradients are averaged. "
        "More than 1 runs the trainer under `accelerate launch`; a worker with fewer devices fails the "
        "job with error `not_enough_gpus`. Logged metrics are averages over the processes.",
    )
    max_train_steps: int = Field(default=2000, ge=1, le=MAX_STEPS, description="Optimizer steps in all.")
    learning_rate: float = Field(default=1e-5, gt=0.0, le=1.0, description="Peak learning rate (AdamW).")
    lr_scheduler: LRScheduler = Field(default="constant", description="Learning-rate schedule after warmup.")
    lr_warmup_steps: int = Field(
        default=0, ge=0, le=MAX_STEPS, description="Linear warmup steps (not with 'constant')."
    )
    adam_beta1: float = Field(default=0.9, ge=0.0, lt=1.0, description="AdamW beta1.")
    adam_beta2: float = Field(default=0.999, ge=0.0, lt=1.0, description="AdamW beta2.")
    adam_weight_decay: float = Field(
        default=1e-2, ge=0.0, le=10.0, description="AdamW decoupled weight decay."
    )
    adam_epsilon: float = Field(default=1e-8, gt=0.0, le=1.0, description="AdamW epsilon.")
    max_grad_norm: float = Field(default=1.0, gt=0.0, le=1e6, description="Gradient-norm clipping threshold.")
    beta: float = Field(
        default=0.1, gt=0.0, le=1e4, description="MaPO: weight of the preference (margin) term."
    )
    gamma: float = Field(
        default=0.5,
        gt=0.0,
        le=1e4,
        description="MaPO: scale of the errors inside the bounded score s(gamma*m).",
    )
    margin_scale: float | None = Field(
        default=None,
        gt=0.0,
        le=1e6,
        description="MaPO: T, the scale of the margin inside the log-sigmoid. None: the family's default, "
        f"1000 (the scheduler's timesteps, as the reference) for {families_of('noise_prediction')} and 100 "
        f"for the flow-matching families ({families_of('flow_matching')}), whose velocity errors are "
        "larger (measured by a sweep: docs/experiments.md, section 2b).",
    )
    beta_dpo: float | None = Field(
        default=None,
        gt=0.0,
        le=1e7,
        description="Diffusion-DPO: KL strength beta. None: the family's default, 5000 for "
        f"{families_of('noise_prediction')} (the reference) and 500 for the flow-matching families "
        f"({families_of('flow_matching')}; measured by a sweep: docs/experiments.md, section 2b).",
    )
    weighting_scheme: WeightingScheme | None = Field(
        default=None,
        description=f"{families_taking('weighting_scheme')} only: how the noise level sigma is drawn per "
        "pair (logit_normal, mode, "
        "uniform) or the loss weighted (sigma_sqrt, cosmap; levels uniform), as in diffusers' scripts. "
        "None: logit_normal.",
    )
    logit_mean: float | None = Field(
        default=None,
        ge=-10.0,
        le=10.0,
        description=f"{families_taking('logit_mean')}, logit_normal: mean of the normal (0).",
    )
    logit_std: float | None = Field(
        default=None,
        gt=0.0,
        le=10.0,
        description=f"{families_taking('logit_std')}, logit_normal: std of the normal (1).",
    )
    mode_scale: float | None = Field(
        default=None,
        ge=0.0,
        le=2.0,
        description=f"{families_taking('mode_scale')}, mode weighting: its scale (1.29).",
    )
    guidance: float | None = Field(
        default=None,
        ge=0.0,
        le=100.0,
        description=f"{families_taking('guidance')} only: the guidance value given to a guidance-distilled "
        "transformer (FLUX.1-dev) while training. None: 3.5, as diffusers' FLUX scripts.",
    )
    use_t5: bool | None = Field(
        default=None,
        description=f"{families_taking('use_t5')} only: false trains without the T5 encoder (its tokens "
        "are zeros, as the "
        "pipeline does without text_encoder_3), saving its memory. None: true.",
    )
    lora_rank: int = Field(default=8, ge=1, le=1024, description="LoRA rank r.")
    lora_alpha: float | None = Field(
        default=None, gt=0.0, le=1e5, description="LoRA alpha; None means alpha = r."
    )
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    lora_target_modules: list[Annotated[str, Field(max_length=MAX_MODULE_NAME_CHARS)]] | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Module names (suffixes) of the denoiser that receive LoRA adapters. None: the family's "
        "default, its attention projections (to_q, to_k, to_v, to_out.0, and in a joint attention the "
        "text stream's: add_q_proj, add_k_proj, add_v_proj, to_add_out).",
    )
    mixed_precision: MixedPrecision = Field(
        default="fp16",
        description="Autocast dtype on CUDA; base weights are stored in it, LoRA weights stay float32. "
        "On a machine without CUDA training runs in float32 and the Started event says so.",
    )
    base_precision: BasePrecision | None = Field(
        default=None,
        description="How the frozen denoiser's weights are held. fp32/bf16/fp16: that float dtype; int8: "
        "torchao int8 weight-only (about half of bf16's memory); nf4: bitsandbytes 4-bit NormalFloat with "
        "double quantization (QLoRA, about a third); fp8: torchao float8 weight-only, CUDA GPUs of compute "
        "capability 8.9 or more only. Quantized weights compute in the mixed-precision dtype and the LoRA "
        "trains in float32 on top; the adapter is saved in float and loads on the unquantized base. "
        "auto: the least lossy precision that fits the job's plan (POST /v1/jobs/estimate). "
        "None: the mixed-precision dtype (float32 without CUDA).",
    )
    text_encoder_precision: TextEncoderPrecision | None = Field(
        default=None,
        description="How the text encoders' weights are held while they encode (with the latent cache on, "
        "they encode once at the start and are then freed): a float dtype, or int8 / nf4 as for "
        "base_precision. None: the mixed-precision dtype (float32 without CUDA).",
    )
    gradient_checkpointing: bool = Field(default=False, description="Trade compute for UNet memory.")
    compile_denoiser: bool | Literal["auto"] = Field(
        default="auto",
        description='torch.compile (inductor) the denoiser\'s repeated blocks. "auto": time the first 3 '
        "steps and compile when the steps left at that speed save more than compiling costs (counting "
        "5% of a step saved against about 60 s of compiling), so long jobs compile and short ones do "
        "not; true: compile "
        "before the first step; false: never. The `compile` event says what was decided and why; see "
        'docs/benchmarks.md, "Faster floor".',
    )
    seed: int = Field(
        default=0, ge=0, le=MAX_SEED, description="Seed of data order, noise, timesteps and LoRA init."
    )
    checkpoint_every_n_steps: int = Field(
        default=500, ge=1, le=MAX_STEPS, description="Save a resumable checkpoint every N optimizer steps."
    )
    keep_checkpoints: int = Field(default=3, ge=1, le=100, description="Newest checkpoints kept on disk.")
    validation: ValidationSpec = Field(default_factory=ValidationSpec, description="Validation images.")
    generation: GenerationSpec = Field(
        default_factory=GenerationSpec,
        description="Targets and avoid datasets only: how the base model draws each pair's missing image.",
    )
    eval_fraction: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Fraction of pairs held out (never trained on) to measure preference accuracy on.",
    )
    eval_every_n_steps: int | None = Field(
        default=None,
        ge=1,
        le=MAX_STEPS,
        description="Measure held-out accuracy every N steps (and at 0 and the end).",
    )
    random_crop: bool = Field(default=False, description="Random instead of center crop.")
    hflip: bool = Field(default=True, description="Flip both images of a pair together with p = 0.5.")
    cache_latents: bool | None = Field(
        default=None,
        description="Encode each image (and its flip) and each prompt once and reuse them every epoch, so "
        "a step is one denoiser pass without the VAE and text encoders. None: on, unless random_crop (a "
        "cached latent is a center crop); the started event says whether it is on and why.",
    )

    @model_validator(mode="after")
    def _check_combinations(self) -> Self:
        if self.resolution is not None and self.resolution % 8:
            raise SpecConflict("resolution", f"resolution must be a multiple of 8, got {self.resolution}")
        if self.lr_scheduler == "constant" and self.lr_warmup_steps:
            raise SpecConflict("lr_warmup_steps", "lr_warmup_steps needs lr_scheduler other than 'constant'")
        if self.lr_warmup_steps > self.max_train_steps:
            raise SpecConflict("lr_warmup_steps", "lr_warmup_steps must not exceed max_train_steps")
        if self.cache_latents and self.random_crop:
            raise SpecConflict(
                "random_crop",
                "random_crop cannot be combined with cache_latents (cached latents are center crops)",
            )
        if self.eval_every_n_steps is not None and self.eval_fraction == 0.0:
            raise SpecConflict("eval_every_n_steps", "eval_every_n_steps needs eval_fraction > 0")
        if any(not m.strip() for m in self.lora_target_modules or ()):
            raise SpecConflict("lora_target_modules", "lora_target_modules must not contain empty names")
        return self

    def family_options(self) -> dict[str, Any]:
        """The family-specific fields, for the family to read its settings from (None where unset)."""
        return {name: getattr(self, name) for name in sorted(FAMILY_SPECIFIC_FIELDS)}

    def check_family(self, family: FamilyName) -> None:
        """Raise SpecConflict naming the first family-specific field set that `family` does not take, or
        a resolution that is not a multiple of the family's `resolution_multiple`."""
        facts = FAMILIES[family]
        for name in sorted(FAMILY_SPECIFIC_FIELDS - facts.fields):
            if getattr(self, name) is not None:
                takers = ", ".join(f for f, other in FAMILIES.items() if name in other.fields)
                raise SpecConflict(name, f"{name} applies to {takers} base models, not to {family}")
        multiple = facts.resolution_multiple
        if self.resolution is not None and self.resolution % multiple:
            raise SpecConflict(
                "resolution",
                f"resolution must be a multiple of {multiple} for {facts.label} base models (their latents "
                f"are cut into patches), got {self.resolution}",
            )

    def latent_cache(self) -> tuple[bool, str]:
        """Whether this run caches latents and text embeddings, and why (for the started event)."""
        if self.cache_latents is not None:
            return self.cache_latents, f"cache_latents is {str(self.cache_latents).lower()} in the spec"
        if self.random_crop:
            return False, "random_crop draws a new crop every step, which cached latents cannot"
        return True, "on by default"

    @property
    def effective_lora_alpha(self) -> float:
        """LoRA alpha with the `None` default resolved (alpha = rank, as in the reference)."""
        return float(self.lora_rank) if self.lora_alpha is None else self.lora_alpha

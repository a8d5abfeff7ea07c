"""Everything one training run holds: accelerator, model with LoRA, data, optimizer, evaluator.

`open_session` does the set-up the loop should not care about; the session's methods run the periodic
side jobs (validation images, held-out evaluation) and hand out each epoch's data loader.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.data_loader import skip_first_batches
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from trainer.batch import PairBatch
from trainer.cache_store import CACHE_DIR, CacheStore
from trainer.compiling import eager
from trainer.data import Augment, EpochSampler, PairDataset, collate_pairs, load_pairs, split_pairs
from trainer.dataset_format import PairRecord
from trainer.device_plan import resolve_auto
from trainer.encoding import CachedPairDataset, collate_cached
from trainer.errors import CheckpointError, SpecMismatchError, WorldSizeError
from trainer.evaluation import HeldOutEvaluator
from trainer.events import Caching, Evaluation, Event, Sample
from trainer.families.base import ModelFamily
from trainer.families.registry import load_base
from trainer.fast_floor import adamw_options, prepare_denoiser
from trainer.lora import attach_lora, trainable_parameters
from trainer.quantization import is_quantized, precision_of
from trainer.sampling import PromptEmbeddings, Renderer, render
from trainer.spec import SpecConflict, TrainSpec

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainingSession:
    spec: TrainSpec
    accelerator: Accelerator
    model: ModelFamily
    denoiser: Any  # the prepared (possibly distributed-wrapped) UNet or transformer
    lora_config: LoraConfig
    trainable: list[torch.nn.Parameter]
    optimizer: Any
    lr_scheduler: Any
    loader: Any
    sampler: EpochSampler  # the loader's, which sets each epoch's order
    output_dir: Path
    resolution: int
    mixed_precision: str
    num_train_pairs: int
    num_eval_pairs: int
    evaluator: HeldOutEvaluator | None
    base_precision: str
    text_encoder_precision: str
    # The validation prompts encoded up front, where the text encoders were freed after the cache.
    prompt_embeddings: PromptEmbeddings | None = None
    last_checkpoint_step: int = 0
    _renderer: Renderer | None = field(default=None, repr=False)

    @property
    def lora_denoiser(self) -> torch.nn.Module:
        """The denoiser carrying the LoRA, without accelerate's wrapper."""
        unwrapped: torch.nn.Module = self.accelerator.unwrap_model(self.denoiser)
        return unwrapped

    @property
    def updates_per_epoch(self) -> int:
        return math.ceil(len(self.loader) / self.spec.gradient_accumulation_steps)

    def epoch_loader(self, epoch: int, *, skip_updates: int) -> Any:
        """The loader for `epoch`, skipping the micro-batches of updates already done (on resume)."""
        # Epochs start on update boundaries, so accumulation restarts its micro-step count here.
        self.accelerator.step = 0
        return epoch_loader(
            self.loader,
            self.sampler,
            epoch,
            skip_batches=skip_updates * self.spec.gradient_accumulation_steps,
        )

    def run_validation(self, *, step: int, emit: Callable[[Event], None], initial: bool = False) -> None:
        """Render the validation prompts: the base model's at the first call, the LoRA's at later ones."""
        validation = self.spec.validation
        if not validation.prompts or not self.accelerator.is_main_process:
            return
        if self._renderer is None:
            self._renderer = Renderer.build(self.model, self.lora_denoiser, self.prompt_embeddings)
        # The base model's images (LoRA off) never change: rendered once, reported at step 0.
        folder, shown_step = ("base", 0) if initial else (f"step-{step:06d}", step)
        with eager():  # a few sampling calls would not earn back their recompiles
            images = render(
                self._renderer,
                validation,
                resolution=self.resolution,
                out_dir=self.output_dir / "samples" / folder,
                with_lora=not initial,
            )
        emit(Sample(step=shown_step, images=images))

    def run_evaluation(self, *, step: int, emit: Callable[[Event], None], force: bool = False) -> None:
        """Held-out preference metrics at the spec's interval (or now, if `force`)."""
        every = self.spec.eval_every_n_steps
        due = force or (every is not None and step % every == 0)
        if self.evaluator is None or not due or not self.accelerator.is_main_process:
            return
        with eager():
            metrics = self.evaluator.evaluate(self.lora_denoiser)
        emit(Evaluation(step=step, metrics=metrics))


def open_session(
    spec: TrainSpec, dataset_dir: Path, output_dir: Path, *, on_event: Callable[[Event], None] | None = None
) -> TrainingSession:
    """Load the model, attach LoRA, split and load the data, and prepare it all with accelerate. The main
    process reports the latent cache's progress to `on_event`."""
    mixed = spec.mixed_precision if torch.cuda.is_available() else "no"
    accelerator = Accelerator(
        mixed_precision=mixed, gradient_accumulation_steps=spec.gradient_accumulation_steps
    )
    _check_world_size(spec, accelerator)
    spec = resolve_auto(spec, accelerator.device)  # so the session and its started event hold the choice
    set_seed(spec.seed)  # the same on every process: one LoRA init, one train/eval split
    model = load_base(spec, accelerator.device, DTYPES[mixed])
    try:
        spec.check_family(model.name)
    except SpecConflict as exc:
        raise SpecMismatchError(str(exc)) from exc
    resolution = spec.resolution or model.native_resolution
    targets = spec.lora_target_modules or list(model.default_lora_targets)
    lora_config = attach_lora(
        model.denoiser,
        fused=not is_quantized(model.denoiser),
        rank=spec.lora_rank,
        alpha=spec.effective_lora_alpha,
        dropout=spec.lora_dropout,
        targets=targets,
        exclude=[name for name in model.discarded_modules() if name.endswith(tuple(targets))],
    )
    if spec.gradient_checkpointing:
        model.enable_gradient_checkpointing(model.denoiser)
    prepare_denoiser(model.denoiser, accelerator.device)
    report = on_event if on_event is not None and accelerator.is_main_process else None
    store = _cache_store(spec, output_dir, writes=accelerator.is_main_process)
    data = _build_data(spec, model, dataset_dir, resolution, store=store, on_event=report)
    trainable = trainable_parameters(model.denoiser)
    optimizer, lr_scheduler = _build_optimizer(spec, trainable, accelerator.num_processes)
    _checkpoint_only_lora_weights(accelerator)
    # The loader is sharded here: each process iterates its own batches of the same epoch order.
    denoiser, optimizer, loader, lr_scheduler = accelerator.prepare(
        model.denoiser, optimizer, data.loader, lr_scheduler
    )
    if accelerator.num_processes > 1:
        # Noise and timesteps of each process from a stream of its own (seed + rank), or every process
        # would draw the same ones for its shard. A single process keeps the stream it always had.
        set_seed(spec.seed, device_specific=True)
    evaluator = None
    if data.eval_pairs and accelerator.is_main_process:
        evaluator = HeldOutEvaluator(
            model, dataset_dir, data.eval_pairs, resolution=resolution, seed=spec.seed, store=store
        )
    prompt_embeddings = _encode_the_rest_and_free_text_encoders(spec, model, accelerator)
    return TrainingSession(
        spec=spec,
        accelerator=accelerator,
        model=model,
        denoiser=denoiser,
        lora_config=lora_config,
        trainable=trainable,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        loader=loader,
        sampler=data.sampler,
        output_dir=output_dir,
        resolution=resolution,
        mixed_precision=mixed,
        num_train_pairs=data.num_train_pairs,
        num_eval_pairs=len(data.eval_pairs),
        evaluator=evaluator,
        base_precision=precision_of(spec.base_precision, DTYPES[mixed]).name,
        text_encoder_precision=precision_of(spec.text_encoder_precision, DTYPES[mixed]).name,
        prompt_embeddings=prompt_embeddings,
    )


LORA_STATE_FILE = "lora_state.safetensors"


def epoch_loader(loader: Any, sampler: EpochSampler, epoch: int, *, skip_batches: int) -> Any:
    """`loader` (as prepared by accelerate) set to `epoch`, without its first `skip_batches` batches."""
    if skip_batches:
        loader = skip_first_batches(loader, skip_batches)
    # accelerate's loaders re-set their sampler's epoch from their own iteration counter when iterated,
    # and a fresh skipping loader counts from 0: tell the loader itself which epoch this is. Its skipping
    # batch sampler of several processes does not pass the epoch on, so tell our sampler too; without it
    # a run resumed mid-epoch on 2 processes replayed the first epoch's order.
    loader.set_epoch(epoch)
    sampler.set_epoch(epoch)
    return loader


def _cache_store(spec: TrainSpec, output_dir: Path, *, writes: bool) -> CacheStore:
    """The job's latent caches beside its checkpoints, so a resumed job reads what it encoded before."""
    return CacheStore(
        output_dir / CACHE_DIR, base_model=spec.base_model, options=spec.family_options(), writes=writes
    )


def _encode_the_rest_and_free_text_encoders(
    spec: TrainSpec, model: ModelFamily, accelerator: Accelerator
) -> PromptEmbeddings | None:
    """With the latent cache, the text encoders are done once the training and held-out pairs are
    encoded: the validation prompts are encoded too (on the main process, which renders them) and the
    encoders freed, so the run holds only what its step uses. Without the cache every step encodes its
    prompts, and the encoders stay."""
    if not spec.latent_cache()[0]:
        return None
    embeddings = None
    if spec.validation.prompts and accelerator.is_main_process:
        embeddings = PromptEmbeddings.encode(model, spec.validation.prompts)
    model.free_text_encoders()
    # Reference counting frees them already (on every tiny family); the collector's pass is for whatever
    # a reference cycle may still hold, and CUDA's caching allocator keeps freed blocks until told.
    gc.collect()
    if accelerator.device.type == "cuda":
        torch.cuda.empty_cache()
    return embeddings


def _check_world_size(spec: TrainSpec, accelerator: Accelerator) -> None:
    """The spec's `gpus` sets the effective batch, and a checkpoint holds one RNG state per process: a
    run with another number of processes would train (or resume) something else than was asked."""
    if accelerator.num_processes != spec.gpus:
        raise WorldSizeError(
            f"gpus is {spec.gpus} but this run has {accelerator.num_processes} process(es); start it with "
            f"`accelerate launch --num_processes {spec.gpus}` (or set gpus to {accelerator.num_processes})"
        )


def _checkpoint_only_lora_weights(accelerator: Accelerator) -> None:
    """accelerate would save and load the whole UNet with every checkpoint (~5 GB for SDXL in fp16),
    though only the LoRA weights ever change; these hooks store and restore just those, in peft's
    naming and full float32 precision, beside the optimizer and RNG states."""

    def save(models: list[Any], weights: list[Any], output_dir: str) -> None:
        if accelerator.is_main_process:
            lora = get_peft_model_state_dict(accelerator.unwrap_model(models[0]))
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in lora.items()},
                str(Path(output_dir) / LORA_STATE_FILE),
            )
        weights.clear()

    def load(models: list[Any], input_dir: str) -> None:
        model = accelerator.unwrap_model(models.pop())
        result = set_peft_model_state_dict(model, load_file(str(Path(input_dir) / LORA_STATE_FILE)))
        if result.unexpected_keys:
            raise CheckpointError(f"checkpoint LoRA has keys this model lacks: {result.unexpected_keys[:3]}")

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


@dataclass
class _Data:
    loader: DataLoader[Any]
    sampler: EpochSampler
    num_train_pairs: int
    eval_pairs: list[PairRecord]


def _build_data(
    spec: TrainSpec,
    model: ModelFamily,
    dataset_dir: Path,
    resolution: int,
    *,
    store: CacheStore,
    on_event: Callable[[Event], None] | None = None,
) -> _Data:
    """Split off the held-out pairs, then a loader over the rest: pixels, or cached latents (read from
    `store` where an earlier run of the job stored them)."""
    pairs = load_pairs(dataset_dir)
    train_idx, eval_idx = split_pairs(len(pairs), spec.eval_fraction, spec.seed)
    train_pairs = [pairs[i] for i in train_idx]
    augment = Augment(resolution, spec.random_crop, spec.hflip)
    dataset: Dataset[dict[str, Any]]
    collate: Callable[[list[dict[str, Any]]], PairBatch]
    if spec.latent_cache()[0]:
        progress = _cache_progress(on_event)
        cache = store.load_or_build(model, dataset_dir, train_pairs, augment, on_progress=progress)
        dataset = CachedPairDataset(cache, hflip=spec.hflip, seed=spec.seed)
        collate = collate_cached
    else:
        dataset, collate = PairDataset(dataset_dir, train_pairs, augment, seed=spec.seed), collate_pairs
    sampler = EpochSampler(len(train_pairs), spec.seed)
    # A generator of its own: each new iterator draws a base seed from it, which would otherwise come from
    # the global RNG and shift the noise stream of a resumed run away from the uninterrupted one.
    generator = torch.Generator().manual_seed(spec.seed)
    loader = DataLoader(
        dataset, batch_size=spec.train_batch_size, sampler=sampler, collate_fn=collate, generator=generator
    )
    return _Data(loader, sampler, len(train_pairs), [pairs[i] for i in eval_idx])


CACHE_PROGRESS_EVENTS = 10  # about this many progress events per cache build, however many pairs


def _cache_progress(on_event: Callable[[Event], None] | None) -> Callable[[int, int], None] | None:
    """A build_cache progress callback: a Caching event every tenth of the way, and at the end."""
    if on_event is None:
        return None
    reported = [0]

    def progress(ready: int, total: int) -> None:
        if ready == total or ready - reported[0] >= max(1, total // CACHE_PROGRESS_EVENTS):
            reported[0] = ready
            on_event(Caching(ready=ready, total=total))

    return progress


def _build_optimizer(
    spec: TrainSpec, trainable: list[torch.nn.Parameter], num_processes: int
) -> tuple[Any, Any]:
    optimizer = torch.optim.AdamW(
        trainable,
        lr=spec.learning_rate,
        betas=(spec.adam_beta1, spec.adam_beta2),
        weight_decay=spec.adam_weight_decay,
        eps=spec.adam_epsilon,
        **adamw_options(trainable),
    )
    # accelerate steps a prepared scheduler once per process, so its horizon scales with them.
    lr_scheduler = get_scheduler(
        spec.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=spec.lr_warmup_steps * num_processes,
        num_training_steps=spec.max_train_steps * num_processes,
    )
    return optimizer, lr_scheduler

"""`train()`: the training loop on accelerate. A spec and a dataset in, typed events and an adapter out.

Runs unchanged under `accelerate launch` with `spec.gpus` processes (data parallel; `trainer.launch`
starts it so): each process trains its own shard, only the main process emits events and writes
checkpoints, samples and adapters. Calling it again with the same output_dir resumes from the newest
complete checkpoint.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer import cache_store, checkpoints
from trainer.batch import PairBatch
from trainer.compiling import CompilePlan, compile_blocks
from trainer.errors import CheckpointError, NonFiniteLossError
from trainer.events import Artifact, Checkpoint, Compile, Event, Finished, Started, Step
from trainer.export import save_diffusers_lora, save_kohya_lora
from trainer.fast_floor import reapply_adamw_options
from trainer.objective import prepare_inputs, read_terms, training_terms, trains_on_chosen_only
from trainer.session import TrainingSession, open_session
from trainer.spec import TrainSpec

ADAPTER_DIR = "adapter"


@dataclass
class TrainResult:
    final_step: int
    total_steps: int
    stopped: bool
    adapter_path: Path | None
    kohya_path: Path | None
    metrics: dict[str, float] = field(default_factory=dict)


def _never() -> bool:
    return False


def train(
    spec: TrainSpec,
    dataset_dir: Path,
    output_dir: Path,
    *,
    on_event: Callable[[Event], None],
    should_stop: Callable[[], bool] = _never,
) -> TrainResult:
    """Train `spec` on the dataset at `dataset_dir`, writing checkpoints, samples and the adapter under
    `output_dir`. `should_stop()` is polled before every micro-step; when it answers True the run saves a
    checkpoint and returns with `stopped=True`. Raises `trainer.errors.TrainingError` subclasses."""
    output_dir.mkdir(parents=True, exist_ok=True)
    session = open_session(spec, dataset_dir, output_dir, on_event=on_event)
    emit = on_event if session.accelerator.is_main_process else (lambda event: None)
    start_step = _resume(session, output_dir)
    emit(_started_event(session, start_step))
    session.run_validation(step=start_step, emit=emit, initial=True)
    session.run_evaluation(step=start_step, emit=emit, force=True)
    step, stopped, metrics = _run_steps(session, start_step, emit, should_stop)
    if stopped:
        if step > session.last_checkpoint_step:
            _checkpoint(session, output_dir, step, metrics, emit)
        emit(Finished(step=step, total_steps=spec.max_train_steps, stopped=True))
        return TrainResult(step, spec.max_train_steps, True, None, None, metrics)
    if session.last_checkpoint_step != step:
        _checkpoint(session, output_dir, step, metrics, emit)
    session.run_validation(step=step, emit=emit)
    every = session.spec.eval_every_n_steps
    if every is None or step % every:  # otherwise _after_step has just evaluated this step
        session.run_evaluation(step=step, emit=emit, force=True)
    adapter, kohya = _export(session, output_dir, emit)
    if session.accelerator.is_main_process:
        cache_store.discard(output_dir)  # only a resume reads it, and a finished job does not resume
    emit(Finished(step=step, total_steps=spec.max_train_steps, stopped=False))
    return TrainResult(step, spec.max_train_steps, False, adapter, kohya, metrics)


def _run_steps(
    session: TrainingSession, step: int, emit: Callable[[Event], None], should_stop: Callable[[], bool]
) -> tuple[int, bool, dict[str, float]]:
    """Optimizer steps from `step` to max_train_steps; returns (step reached, stopped early, metrics)."""
    spec, accelerator = session.spec, session.accelerator
    per_epoch = session.updates_per_epoch
    metrics: dict[str, float] = {}
    plan = CompilePlan(spec.compile_denoiser, total_steps=spec.max_train_steps)
    _apply(session, plan.start(step=step), emit)
    while step < spec.max_train_steps:
        epoch, done_in_epoch = divmod(step, per_epoch)
        loader = session.epoch_loader(epoch, skip_updates=done_in_epoch)
        sums: dict[str, torch.Tensor] = {}
        micro = 0
        started = time.perf_counter()
        for batch in loader:
            if _stop_agreed(session, should_stop):
                return step, True, metrics
            sums = _add(sums, _micro_step(session, batch, step))
            micro += 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            metrics = _finish_step(session, sums, micro, time.perf_counter() - started, step)
            emit(Step(step=step, total_steps=spec.max_train_steps, metrics=metrics))
            _after_step(session, step, metrics, emit)
            if not plan.decided:
                _apply(session, plan.after_step(step, seconds=_agreed(session, metrics["step_time_s"])), emit)
            sums, micro, started = {}, 0, time.perf_counter()
            if step >= spec.max_train_steps:
                break
    return step, False, metrics


def _apply(session: TrainingSession, decision: Compile | None, emit: Callable[[Event], None]) -> None:
    if decision is None:
        return
    if decision.compiled:
        compile_blocks(session.lora_denoiser, session.model.repeated_block_names())
    emit(decision)


def _agreed(session: TrainingSession, seconds: float) -> float:
    """The processes' mean step time, so that all of them take the same compile decision."""
    accelerator = session.accelerator
    if accelerator.num_processes == 1:
        return seconds
    mean = accelerator.reduce(torch.tensor(seconds, device=accelerator.device), reduction="mean")
    return float(mean)


def _stop_agreed(session: TrainingSession, should_stop: Callable[[], bool]) -> bool:
    """Any process's stop request stops them all at the same micro-step: a process that left alone would
    leave the others waiting forever in the next gradient all-reduce."""
    requested = should_stop()
    accelerator = session.accelerator
    if accelerator.num_processes == 1:
        return requested
    votes = accelerator.reduce(torch.tensor(float(requested), device=accelerator.device), reduction="sum")
    return bool(votes > 0)


def _micro_step(session: TrainingSession, batch: PairBatch, step: int) -> dict[str, torch.Tensor]:
    """One micro-batch's forward, backward and (on update boundaries) optimizer step. The terms stay on
    the device: reading them here would make the host wait for the device every micro-step."""
    accelerator = session.accelerator
    with accelerator.accumulate(session.denoiser):
        inputs = prepare_inputs(
            session.model, batch, session.resolution, chosen_only=trains_on_chosen_only(session.spec)
        )
        loss, terms = training_terms(session.spec, session.denoiser, session.model, inputs)
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            norm = accelerator.clip_grad_norm_(session.trainable, session.spec.max_grad_norm)
            terms["grad_norm"] = torch.as_tensor(norm).detach()
        session.optimizer.step()
        session.lr_scheduler.step()
        session.optimizer.zero_grad(set_to_none=True)
    return terms


def _finish_step(
    session: TrainingSession, sums: dict[str, torch.Tensor], micro: int, seconds: float, step: int
) -> dict[str, float]:
    """The step's logged metrics, read from the device in one copy. A non-finite loss fails the job here,
    before the step could be checkpointed, so the newest checkpoint on disk stays a good one."""
    read = read_terms(sums)
    loss = read.get("loss", 0.0)
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"loss is {loss / micro} at step {step}; the newest good checkpoint is step "
            f"{session.last_checkpoint_step}"
        )
    metrics = {name: value / micro for name, value in read.items() if name != "grad_norm"}
    # fp16's loss scaler starts high and overflows in the first updates, which it then skips; an inf/NaN
    # norm says nothing about the model and is not valid JSON in the event log.
    norm = read.get("grad_norm")
    if norm is not None and math.isfinite(norm):
        metrics["grad_norm"] = norm
    metrics = _mean_over_processes(session, metrics)
    metrics["lr"] = float(session.lr_scheduler.get_last_lr()[0])
    metrics["step_time_s"] = seconds
    return metrics


def _mean_over_processes(session: TrainingSession, metrics: dict[str, float]) -> dict[str, float]:
    """Each process measured its own shard; report the mean over them. Every process logs the same
    names (the method decides them, and a non-finite grad norm is skipped on all, the gradients being
    all-reduced), so one all-reduce of the values in name order suffices."""
    accelerator = session.accelerator
    if accelerator.num_processes == 1:
        return metrics
    names = sorted(metrics)
    values = torch.tensor([metrics[n] for n in names], dtype=torch.float64, device=accelerator.device)
    means = accelerator.reduce(values, reduction="mean")
    return dict(zip(names, means.tolist(), strict=True))


def _after_step(
    session: TrainingSession, step: int, metrics: dict[str, float], emit: Callable[[Event], None]
) -> None:
    spec = session.spec
    if step % spec.checkpoint_every_n_steps == 0:
        _checkpoint(session, session.output_dir, step, metrics, emit)
    every = spec.validation.every_n_steps
    if every and step % every == 0 and step < spec.max_train_steps:
        session.run_validation(step=step, emit=emit)
    session.run_evaluation(step=step, emit=emit)


def _checkpoint(
    session: TrainingSession,
    output_dir: Path,
    step: int,
    metrics: dict[str, float],
    emit: Callable[[Event], None],
) -> None:
    """Every process writes its own RNG state into the shared folder; the main process writes the rest
    (optimizer, scheduler, LoRA weights, the diffusers adapter of this step) and publishes it."""
    accelerator = session.accelerator
    accelerator.wait_for_everyone()
    tmp = checkpoints.begin_checkpoint(output_dir, step) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(checkpoints.temporary_folder(output_dir, step) / "state"))
        accelerator.wait_for_everyone()
        if tmp is not None:
            save_diffusers_lora(session.lora_denoiser, session.lora_config, session.model, tmp / "lora")
    except Exception as exc:
        # A full disk or a storage error surfaces as OSError, torch's RuntimeError or a SafetensorError;
        # whichever it is, the job fails as a checkpoint failure and the earlier checkpoints stay as they are.
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"saving the checkpoint of step {step} failed: {exc}") from exc
    if tmp is not None:
        path = checkpoints.publish_checkpoint(
            output_dir, step, state={"metrics": metrics}, keep=session.spec.keep_checkpoints
        )
        emit(Checkpoint(step=step, path=str(path), metrics=dict(metrics)))
    session.last_checkpoint_step = step
    accelerator.wait_for_everyone()


def _resume(session: TrainingSession, output_dir: Path) -> int:
    checkpoints.remove_incomplete(output_dir)
    latest = checkpoints.latest_checkpoint(output_dir)
    if latest is None:
        return 0
    step, path = latest
    session.accelerator.load_state(str(path / "state"))
    reapply_adamw_options(session.optimizer)
    session.last_checkpoint_step = step
    return min(step, session.spec.max_train_steps)


def _export(
    session: TrainingSession, output_dir: Path, emit: Callable[[Event], None]
) -> tuple[Path | None, Path | None]:
    if not session.accelerator.is_main_process:
        return None, None
    out = output_dir / ADAPTER_DIR
    adapter = save_diffusers_lora(session.lora_denoiser, session.lora_config, session.model, out)
    kohya = save_kohya_lora(session.lora_denoiser, session.model, session.spec.effective_lora_alpha, out)
    emit(Artifact(path=str(adapter), format="diffusers"))
    emit(Artifact(path=str(kohya), format="kohya"))
    return adapter, kohya


def _started_event(session: TrainingSession, start_step: int) -> Started:
    spec = session.spec
    cached, reason = spec.latent_cache()
    return Started(
        total_steps=spec.max_train_steps,
        resumed_from_step=start_step,
        num_train_pairs=session.num_train_pairs,
        num_eval_pairs=session.num_eval_pairs,
        model_family=session.model.name,
        resolution=session.resolution,
        mixed_precision=session.mixed_precision,
        trainable_parameters=sum(p.numel() for p in session.trainable),
        world_size=session.accelerator.num_processes,
        effective_batch_size=spec.train_batch_size
        * session.accelerator.num_processes
        * spec.gradient_accumulation_steps,
        cache_latents=cached,
        cache_reason=reason,
        base_precision=session.base_precision,
        text_encoder_precision=session.text_encoder_precision,
    )


def _add(sums: dict[str, torch.Tensor], terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: sums[name] + value if name in sums else value for name, value in terms.items()}

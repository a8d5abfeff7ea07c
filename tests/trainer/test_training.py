"""Training on the tiny SD and SDXL models, end to end on the CPU: what a user of `train()` relies on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.support.specs import tiny_spec
from trainer.checkpoints import complete_checkpoints
from trainer.errors import NonFiniteLossError
from trainer.events import Artifact, Caching, Checkpoint, Evaluation, Event, Finished, Started, Step
from trainer.loop import train


def _run(spec, dataset: Path, out: Path, should_stop=None) -> tuple[object, list[Event]]:  # type: ignore[no-untyped-def]
    events: list[Event] = []
    kwargs = {"should_stop": should_stop} if should_stop else {}
    result = train(spec, dataset, out, on_event=events.append, **kwargs)
    return result, events


@pytest.mark.parametrize("method", ["mapo", "dpo", "sft"])
def test_every_method_trains_every_family_to_the_last_step(
    family_name: str, tiny_model: Path, method: str, color_pairs: Path, tmp_path: Path
) -> None:
    base, family = tiny_model, family_name
    result, events = _run(tiny_spec(base, method=method), color_pairs, tmp_path)
    steps = [e for e in events if isinstance(e, Step)]
    assert [e.step for e in steps] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(e.metrics["loss"])) for e in steps)
    started = next(e for e in events if isinstance(e, Started))
    assert started.model_family == family and started.resolution == 32
    assert {e.format for e in events if isinstance(e, Artifact)} == {"diffusers", "kohya"}
    assert isinstance(events[-1], Finished) and not events[-1].stopped
    assert result.adapter_path is not None and result.adapter_path.is_file()  # type: ignore[attr-defined]


def test_mapo_step_logs_every_term_of_the_objective(
    tiny_sdxl: Path, color_pairs: Path, tmp_path: Path
) -> None:
    _, events = _run(tiny_spec(tiny_sdxl, max_train_steps=1), color_pairs, tmp_path)
    metrics = next(e for e in events if isinstance(e, Step)).metrics
    expected = {
        "loss",
        "chosen_loss",
        "rejected_loss",
        "chosen_score",
        "rejected_score",
        "margin",
        "preference_term",
        "accuracy",
        "grad_norm",
        "lr",
        "step_time_s",
    }
    assert expected <= metrics.keys()
    assert metrics["loss"] == pytest.approx(metrics["chosen_loss"] + metrics["preference_term"], rel=1e-5)


def test_dpo_starts_at_ln2_because_lora_starts_as_the_reference(
    tiny_sd: Path, color_pairs: Path, tmp_path: Path
) -> None:
    _, events = _run(tiny_spec(tiny_sd, method="dpo", max_train_steps=1), color_pairs, tmp_path)
    first = next(e for e in events if isinstance(e, Step)).metrics
    assert first["loss"] == pytest.approx(0.693147, abs=1e-5)


def test_only_lora_parameters_change(tiny_sdxl: Path, color_pairs: Path, tmp_path: Path) -> None:
    from trainer.loop import _run_steps
    from trainer.session import open_session

    session = open_session(tiny_spec(tiny_sdxl, max_train_steps=2), color_pairs, tmp_path)
    before = {k: v.clone() for k, v in session.lora_denoiser.state_dict().items()}
    _run_steps(session, 0, lambda event: None, lambda: False)
    after = session.lora_denoiser.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "training moved nothing"
    assert all(".lora_A." in k or ".lora_B." in k for k in changed), sorted(changed - {"lora"})[:3]
    assert any(".lora_B." in k for k in changed), "LoRA B starts at zero and must have moved"


def test_checkpoints_hold_the_lora_not_the_whole_unet(
    tiny_sdxl: Path, color_pairs: Path, tmp_path: Path
) -> None:
    _run(tiny_spec(tiny_sdxl, max_train_steps=2), color_pairs, tmp_path)
    ((_, checkpoint),) = complete_checkpoints(tmp_path)[-1:]
    state_files = {p.name for p in (checkpoint / "state").iterdir()}
    assert "lora_state.safetensors" in state_files and "model.safetensors" not in state_files
    saved = load_file(str(checkpoint / "state" / "lora_state.safetensors"))
    assert saved and all("lora_" in k for k in saved)


def test_resume_reproduces_the_uninterrupted_run_exactly(
    tiny_model: Path, color_pairs: Path, tmp_path: Path
) -> None:
    base = tiny_model
    spec = tiny_spec(base, max_train_steps=6, gradient_accumulation_steps=2, checkpoint_every_n_steps=3)
    straight, _ = _run(spec, color_pairs, tmp_path / "straight")
    seen: list[Event] = []
    train(
        spec,
        color_pairs,
        tmp_path / "resumed",
        on_event=seen.append,
        should_stop=lambda: sum(isinstance(e, Step) for e in seen) >= 3,
    )
    resumed, _ = _run(spec, color_pairs, tmp_path / "resumed")
    a = load_file(str(straight.adapter_path))  # type: ignore[attr-defined]
    b = load_file(str(resumed.adapter_path))  # type: ignore[attr-defined]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resumed_run_ends_with_the_full_step_count(
    tiny_sdxl: Path, color_pairs: Path, tmp_path: Path
) -> None:
    spec = tiny_spec(tiny_sdxl, max_train_steps=6, gradient_accumulation_steps=2, checkpoint_every_n_steps=2)
    seen: list[Event] = []

    def stop_after_three() -> bool:
        return sum(isinstance(e, Step) for e in seen) >= 3

    first = train(spec, color_pairs, tmp_path, on_event=seen.append, should_stop=stop_after_three)
    assert first.stopped and first.final_step == 3
    assert complete_checkpoints(tmp_path)[-1][0] == 3, "a stop saves the steps done so far"
    result, events = _run(spec, color_pairs, tmp_path)
    started = next(e for e in events if isinstance(e, Started))
    assert started.resumed_from_step == 3
    assert [e.step for e in events if isinstance(e, Step)] == [4, 5, 6]
    assert result.final_step == 6 and not result.stopped  # type: ignore[attr-defined]


def test_should_stop_is_honoured_before_the_first_step(
    tiny_sd: Path, color_pairs: Path, tmp_path: Path
) -> None:
    result, events = _run(tiny_spec(tiny_sd), color_pairs, tmp_path, should_stop=lambda: True)
    assert result.stopped and result.final_step == 0  # type: ignore[attr-defined]
    assert not any(isinstance(e, Step | Artifact) for e in events)
    assert isinstance(events[-1], Finished) and events[-1].stopped


def test_checkpoints_rotate_to_keep_the_newest(tiny_sd: Path, color_pairs: Path, tmp_path: Path) -> None:
    _, events = _run(
        tiny_spec(tiny_sd, max_train_steps=5, checkpoint_every_n_steps=1, keep_checkpoints=2),
        color_pairs,
        tmp_path,
    )
    assert [e.step for e in events if isinstance(e, Checkpoint)] == [1, 2, 3, 4, 5]
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [4, 5]


def test_non_finite_loss_fails_with_a_typed_error_and_keeps_the_last_checkpoint(
    tiny_sd: Path, color_pairs: Path, tmp_path: Path
) -> None:
    # An absurd learning rate blows the LoRA weights up after the first update; the next loss is inf/NaN.
    spec = tiny_spec(
        tiny_sd,
        learning_rate=1.0,
        adam_epsilon=1e-30,
        max_grad_norm=1e6,
        checkpoint_every_n_steps=1,
        max_train_steps=50,
    )
    spec = spec.model_copy(update={"learning_rate": 1e30})
    with pytest.raises(NonFiniteLossError) as failure:
        _run(spec, color_pairs, tmp_path)
    assert failure.value.code == "non_finite_loss"
    kept = complete_checkpoints(tmp_path)
    assert kept, "the last good checkpoint survives"
    weights = load_file(str(kept[-1][1] / "lora" / "pytorch_lora_weights.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_v_prediction_models_train(tiny_sd: Path, color_pairs: Path, tmp_path: Path) -> None:
    import shutil

    from diffusers import DDPMScheduler

    base = tmp_path / "v-model"
    shutil.copytree(tiny_sd, base)
    scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    DDPMScheduler.from_config(scheduler.config, prediction_type="v_prediction").save_pretrained(
        base / "scheduler"
    )
    result, _ = _run(tiny_spec(base, max_train_steps=1), color_pairs, tmp_path / "out")
    assert result.final_step == 1  # type: ignore[attr-defined]


def test_validation_images_are_rendered_for_the_base_and_the_lora(
    tiny_sdxl: Path, color_pairs: Path, tmp_path: Path
) -> None:
    from PIL import Image

    from trainer.events import Sample

    validation = {"prompts": ["a red circle", "a blue square"], "every_n_steps": 2, "num_inference_steps": 2}
    _, events = _run(tiny_spec(tiny_sdxl, validation=validation), color_pairs, tmp_path)
    samples = [e for e in events if isinstance(e, Sample)]
    assert [(s.step, [i.with_lora for i in s.images]) for s in samples] == [
        (0, [False, False]),
        (2, [True, True]),
        (4, [True, True]),
    ]
    for image in samples[-1].images:
        with Image.open(image.path) as png:
            assert png.size == (32, 32)
    base, final = (Image.open(s.images[0].path).tobytes() for s in (samples[0], samples[-1]))
    assert base != final, "the trained LoRA changes what the model draws from the same seed"


def test_the_cache_is_built_with_progress_before_the_first_step_and_the_start_says_so(
    tiny_sdxl: Path, color_pairs: Path, tmp_path: Path
) -> None:
    _, events = _run(tiny_spec(tiny_sdxl, eval_fraction=0.25), color_pairs, tmp_path)
    caching = [e for e in events if isinstance(e, Caching)]
    started_at = next(i for i, e in enumerate(events) if isinstance(e, Started))
    assert caching and all(events.index(e) < started_at for e in caching)
    assert (caching[-1].ready, caching[-1].total) == (6, 6)
    started = events[started_at]
    assert started.cache_latents and started.cache_reason == "on by default"  # type: ignore[attr-defined]
    assert any(isinstance(e, Evaluation) for e in events), "held-out evaluation runs beside the cache"


def test_random_crop_trains_uncached_and_the_start_says_why(
    tiny_sd: Path, color_pairs: Path, tmp_path: Path
) -> None:
    _, events = _run(tiny_spec(tiny_sd, random_crop=True), color_pairs, tmp_path)
    started = next(e for e in events if isinstance(e, Started))
    assert not started.cache_latents and "random_crop" in started.cache_reason
    assert not any(isinstance(e, Caching) for e in events)

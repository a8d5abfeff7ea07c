"""When the trainer compiles the denoiser's repeated blocks: the spec's choice, or for "auto" the measured
step time against what compiling costs; the blocks compiled in place, evaluation and sampling eager."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support.specs import tiny_spec
from trainer.compiling import (
    COMPILE_COST_S,
    COMPILE_PROBE_STEPS,
    COMPILE_SAVING,
    CompilePlan,
    compile_blocks,
    repeated_blocks,
)
from trainer.events import Compile, Event, Finished, Step, from_dict, to_dict
from trainer.families.base import ImageGeometry
from trainer.families.registry import load_family
from trainer.loop import train
from trainer.lora import attach_lora, lora_switched_off
from trainer.objective import PairInputs, denoising_errors, reference_errors
from trainer.spec import TrainSpec

CPU = torch.device("cpu")


def _spec(**fields: object) -> TrainSpec:
    return TrainSpec.model_validate({"base_model": "/models/x", **fields})


def test_auto_is_the_default_and_true_false_still_mean_always_and_never() -> None:
    assert _spec().compile_denoiser == "auto"
    assert _spec(compile_denoiser=True).compile_denoiser is True
    assert _spec(compile_denoiser=False).compile_denoiser is False
    with pytest.raises(ValueError, match="compile_denoiser"):
        _spec(compile_denoiser="sometimes")


def test_the_spec_s_choice_is_taken_before_the_first_step() -> None:
    on = CompilePlan(True, total_steps=10).start(step=0)
    off = CompilePlan(False, total_steps=10).start(step=0)
    assert on == Compile(step=0, compiled=True, reason="the spec asks for it")
    assert off is not None and not off.compiled and "spec" in off.reason


def test_auto_waits_for_the_probe_steps_then_weighs_the_saving_against_the_cost() -> None:
    # Steps slow enough that the steps left save twice what compiling costs.
    seconds = 2 * COMPILE_COST_S / ((1000 - COMPILE_PROBE_STEPS) * COMPILE_SAVING)
    plan = CompilePlan("auto", total_steps=1000)
    assert plan.start(step=0) is None
    decisions = [plan.after_step(step, seconds=seconds) for step in range(1, COMPILE_PROBE_STEPS + 1)]
    assert decisions[:-1] == [None] * (COMPILE_PROBE_STEPS - 1)
    decided = decisions[-1]
    assert decided is not None and decided.compiled and decided.step == COMPILE_PROBE_STEPS
    assert plan.after_step(COMPILE_PROBE_STEPS + 1, seconds=seconds) is None, "decided once"


def test_auto_leaves_a_job_eager_when_compiling_would_not_pay() -> None:
    steps_left = 1000 - COMPILE_PROBE_STEPS
    # Just below break-even: the saving falls short of the cost.
    seconds = 0.99 * COMPILE_COST_S / (steps_left * COMPILE_SAVING)
    plan = CompilePlan("auto", total_steps=1000)
    decided = [plan.after_step(s, seconds=seconds) for s in range(1, COMPILE_PROBE_STEPS + 1)][-1]
    assert decided is not None and not decided.compiled
    assert "less than" in decided.reason


def test_auto_uses_the_median_probe_step_so_a_slow_first_step_does_not_decide() -> None:
    plan = CompilePlan("auto", total_steps=1000)
    times = [600.0] + [0.01] * (COMPILE_PROBE_STEPS - 1)  # the first step paid for warm-up
    decided = [plan.after_step(s + 1, seconds=t) for s, t in enumerate(times)][-1]
    assert decided is not None and not decided.compiled


def test_auto_decides_at_once_when_too_few_steps_are_left() -> None:
    decided = CompilePlan("auto", total_steps=COMPILE_PROBE_STEPS + 5).start(step=5)
    assert decided is not None and not decided.compiled and "too few" in decided.reason


def test_a_resumed_job_counts_the_steps_it_has_left() -> None:
    plan = CompilePlan("auto", total_steps=1000)
    assert plan.start(step=1000 - COMPILE_PROBE_STEPS) is not None
    assert CompilePlan("auto", total_steps=1000).start(step=100) is None


def test_the_compile_event_round_trips() -> None:
    event = Compile(step=3, compiled=True, reason="auto: ...")
    assert from_dict(to_dict(event)) == event


def test_every_family_names_its_repeated_blocks(tiny_model: Path) -> None:
    loaded = load_family(str(tiny_model), device=CPU, weight_dtype=torch.float32)
    names = loaded.repeated_block_names()
    blocks = repeated_blocks(loaded.denoiser, names)
    assert names and blocks, "regional compile needs the blocks the denoiser repeats"
    assert {type(block).__name__ for block in blocks} <= set(names)
    assert all("Transformer" in type(block).__name__ for block in blocks)


def test_blocks_are_compiled_in_place_and_give_the_eager_errors(tiny_sdxl: Path) -> None:
    family = load_family(str(tiny_sdxl), device=CPU, weight_dtype=torch.float32)
    attach_lora(family.denoiser, rank=4, alpha=4.0, dropout=0.0, targets=list(family.default_lora_targets))
    denoiser = family.denoiser
    latents = torch.randn(2, denoiser.config.in_channels, 4, 4, generator=torch.Generator().manual_seed(0))
    cond = family.encode_prompts(["a", "b"])
    geometry = ImageGeometry.uncropped(2, 32)
    levels = torch.tensor([10, 700])
    eager = family.predict(denoiser, latents, levels, cond, geometry)
    count = compile_blocks(denoiser, family.repeated_block_names())
    blocks = repeated_blocks(denoiser, family.repeated_block_names())
    assert count == len(blocks) > 0
    assert all(block._compiled_call_impl is not None for block in blocks)
    assert denoiser._compiled_call_impl is None, "the blocks, not the whole denoiser"
    assert hasattr(denoiser, "disable_adapters"), "compiled in place: peft's switches stay"
    compiled = family.predict(denoiser, latents, levels, cond, geometry)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_a_job_told_to_compile_trains_evaluates_and_exports(
    tiny_sdxl: Path, color_pairs: Path, tmp_path: Path
) -> None:
    events: list[Event] = []
    spec = tiny_spec(tiny_sdxl, method="dpo", compile_denoiser=True, max_train_steps=3, eval_fraction=0.25)
    result = train(spec, color_pairs, tmp_path, on_event=events.append)
    compiles = [e for e in events if isinstance(e, Compile)]
    assert compiles == [Compile(step=0, compiled=True, reason="the spec asks for it")]
    assert [e.step for e in events if isinstance(e, Step)] == [1, 2, 3]
    assert isinstance(events[-1], Finished) and result.adapter_path is not None


def test_the_separate_reference_pass_through_compiled_blocks_is_the_base_model(tiny_sdxl: Path) -> None:
    """DPO's reference pass beside the policy's (CUDA, gradient checkpointing, larger latents on the
    CPU) runs the compiled blocks in inference mode with the LoRA switched off, between policy passes
    that need gradients."""
    family = load_family(str(tiny_sdxl), device=CPU, weight_dtype=torch.float32)
    attach_lora(family.denoiser, rank=4, alpha=4.0, dropout=0.0, targets=list(family.default_lora_targets))
    denoiser = family.denoiser
    generator = torch.Generator().manual_seed(0)
    for name, param in denoiser.named_parameters():
        if "lora_B" in name:
            param.data = 0.5 * torch.randn(param.shape, generator=generator)
    latents = torch.randn(4, denoiser.config.in_channels, 4, 4, generator=generator)
    inputs = PairInputs(latents, family.encode_prompts(["a", "b"]), ImageGeometry.uncropped(2, 32))
    noise = torch.randn(2, *latents.shape[1:], generator=generator)
    levels = torch.tensor([10, 700])
    with torch.no_grad(), lora_switched_off(denoiser):
        base = denoising_errors(denoiser, family, inputs, noise=noise, levels=levels)
    policy = denoising_errors(denoiser, family, inputs, noise=noise, levels=levels).detach()
    assert not torch.allclose(policy, base, rtol=1e-3), "the LoRA must matter for this to test anything"
    compile_blocks(denoiser, family.repeated_block_names())
    for _ in range(2):
        compiled_policy = denoising_errors(denoiser, family, inputs, noise=noise, levels=levels)
        compiled_policy.sum().backward()
        reference = reference_errors(denoiser, family, inputs, noise, levels)
        torch.testing.assert_close(reference, base, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(compiled_policy.detach(), policy, rtol=1e-4, atol=1e-6)


def test_a_short_auto_job_says_why_it_stays_eager(tiny_sdxl: Path, color_pairs: Path, tmp_path: Path) -> None:
    events: list[Event] = []
    train(tiny_spec(tiny_sdxl, max_train_steps=2), color_pairs, tmp_path, on_event=events.append)
    compiles = [e for e in events if isinstance(e, Compile)]
    assert len(compiles) == 1 and not compiles[0].compiled and "too few" in compiles[0].reason


def test_an_auto_job_whose_steps_earn_it_back_compiles_after_the_probe(
    tiny_sdxl: Path, color_pairs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A free compile pays for any job: the loop then compiles after the probe steps and trains on."""
    import trainer.compiling

    monkeypatch.setattr(trainer.compiling, "COMPILE_COST_S", 0.0)
    events: list[Event] = []
    steps = COMPILE_PROBE_STEPS + 2
    train(tiny_spec(tiny_sdxl, max_train_steps=steps), color_pairs, tmp_path, on_event=events.append)
    compiles = [e for e in events if isinstance(e, Compile)]
    assert len(compiles) == 1 and compiles[0].compiled and compiles[0].step == COMPILE_PROBE_STEPS
    assert [e.step for e in events if isinstance(e, Step)] == list(range(1, steps + 1))


def test_the_event_log_says_what_was_decided_and_why() -> None:
    from worker.translate import describe

    line = describe(Compile(step=3, compiled=False, reason="auto: 7 steps left ..."))
    assert line == "denoiser left eager at step 3 (auto: 7 steps left ...)"
    assert describe(Compile(step=0, compiled=True, reason="the spec asks for it")).startswith(
        "denoiser compiled"
    )

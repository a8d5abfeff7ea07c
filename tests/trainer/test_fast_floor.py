"""The faster floor: device-chosen layout and optimizer, SDPA attention, one sync a step (compiling:
test_compiling.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from tests.support.specs import tiny_spec
from trainer.events import Event, Step
from trainer.families.base import ImageGeometry, ModelFamily, attention_processors
from trainer.families.registry import load_family
from trainer.fast_floor import (
    adamw_options,
    channels_last_pays,
    fold_reference_pays,
    prepare_denoiser,
    reapply_adamw_options,
)
from trainer.loop import _resume, train
from trainer.lora import attach_lora, lora_masked
from trainer.objective import PairInputs, denoising_errors, folded_errors, reference_errors
from trainer.session import open_session

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def _with_lora(folder: Path) -> ModelFamily:
    family = load_family(str(folder), device=CPU, weight_dtype=torch.float32)
    attach_lora(family.denoiser, rank=4, alpha=4.0, dropout=0.0, targets=list(family.default_lora_targets))
    # A non-zero LoRA, so the comparison below also covers the adapter's path.
    with torch.no_grad():
        for name, param in family.denoiser.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.02)
    return family


def _errors(family: ModelFamily, denoiser: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(4, family.vae.config.latent_channels, 4, 4, generator=generator)
    inputs = PairInputs(latents, family.encode_prompts(["a", "b"]), ImageGeometry.uncropped(2, 32))
    noise = torch.randn(2, *latents.shape[1:], generator=generator)
    return denoising_errors(denoiser, family, inputs, noise=noise, levels=torch.tensor([10, 700]))


def test_channels_last_is_chosen_for_the_unet_on_cuda_only(tiny_sdxl: Path, tiny_flux: Path) -> None:
    unet = load_family(str(tiny_sdxl), device=CPU, weight_dtype=torch.float32).denoiser
    transformer = load_family(str(tiny_flux), device=CPU, weight_dtype=torch.float32).denoiser
    assert channels_last_pays(CUDA, unet)
    assert not channels_last_pays(CPU, unet)
    assert not channels_last_pays(CUDA, transformer)


def test_a_channels_last_unet_gives_the_same_errors_and_gradients(tiny_sdxl: Path) -> None:
    family = _with_lora(tiny_sdxl)
    layout = copy.deepcopy(family.denoiser).to(memory_format=torch.channels_last)
    assert layout.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    plain, nhwc = _errors(family, family.denoiser), _errors(family, layout)
    torch.testing.assert_close(nhwc, plain, rtol=1e-4, atol=1e-6)
    plain.sum().backward()  # type: ignore[no-untyped-call]
    nhwc.sum().backward()  # type: ignore[no-untyped-call]
    grads = {n: p.grad for n, p in family.denoiser.named_parameters() if p.requires_grad}
    for name, param in layout.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param.grad, grads[name], rtol=1e-3, atol=1e-6)


def test_on_the_cpu_the_denoiser_keeps_its_layout(tiny_sdxl: Path) -> None:
    family = _with_lora(tiny_sdxl)
    prepare_denoiser(family.denoiser, CPU)
    assert family.denoiser.conv_in.weight.is_contiguous()
    assert family.denoiser._compiled_call_impl is None


def test_every_family_attends_through_sdpa(tiny_model: Path) -> None:
    family = _with_lora(tiny_model)
    assert attention_processors(family.denoiser), "the check must see the attention layers"
    assert family.non_sdpa_processors(family.denoiser) == []


def test_adamw_is_fused_on_the_cpu() -> None:
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert adamw_options(params) == {"fused": True}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_adamw_is_fused_on_cuda_and_foreach_across_devices() -> None:
    assert adamw_options([torch.nn.Parameter(torch.zeros(3, device=CUDA))]) == {"fused": True}
    mixed = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3, device=CUDA))]
    assert adamw_options(mixed) == {"foreach": True}


def test_a_foreach_optimizer_state_resumes_fused_and_takes_the_same_steps() -> None:
    """Checkpoints written by the foreach AdamW of earlier versions: loading one puts its groups' options
    back (foreach), so the trainer re-applies its own after the load."""
    torch.manual_seed(0)
    start = [torch.randn(8, 4), torch.randn(4)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(4)]

    def steps(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], which: range) -> None:
        for step in which:
            for p, g in zip(params, grads[step], strict=True):
                p.grad = g.clone()
            optimizer.step()

    straight = [torch.nn.Parameter(p.clone()) for p in start]
    steps(torch.optim.AdamW(straight, lr=1e-2, weight_decay=1e-2, foreach=True), straight, range(4))
    old = [torch.nn.Parameter(p.clone()) for p in start]
    old_optimizer = torch.optim.AdamW(old, lr=1e-2, weight_decay=1e-2, foreach=True)
    steps(old_optimizer, old, range(2))

    resumed = [torch.nn.Parameter(p.detach().clone()) for p in old]
    optimizer = torch.optim.AdamW(resumed, lr=1e-2, weight_decay=1e-2, **adamw_options(resumed))
    optimizer.load_state_dict(old_optimizer.state_dict())
    assert optimizer.param_groups[0]["foreach"] is True, "what loading alone leaves"
    reapply_adamw_options(optimizer)
    assert optimizer.param_groups[0]["fused"] is True and not optimizer.param_groups[0]["foreach"]
    steps(optimizer, resumed, range(2, 4))
    for a, b in zip(resumed, straight, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_resumed_run_updates_with_the_fused_adamw(
    tiny_sdxl: Path, color_pairs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tiny_spec(tiny_sdxl, max_train_steps=2, gradient_accumulation_steps=1, checkpoint_every_n_steps=2)
    with monkeypatch.context() as old_version:
        old_version.setattr("trainer.session.adamw_options", lambda params: {"foreach": True})
        train(spec, color_pairs, tmp_path, on_event=lambda event: None)
    session = open_session(spec.model_copy(update={"max_train_steps": 3}), color_pairs, tmp_path)
    assert _resume(session, tmp_path) == 2, "resumed from the foreach run's checkpoint"
    group = session.optimizer.param_groups[0]
    assert group["fused"] is True and not group["foreach"]


def test_the_session_builds_a_fused_adamw_on_the_cpu(
    tiny_sdxl: Path, color_pairs: Path, tmp_path: Path
) -> None:
    session = open_session(tiny_spec(tiny_sdxl), color_pairs, tmp_path / "plain")
    assert session.lora_denoiser._compiled_call_impl is None, "compiling is the loop's decision"
    assert session.optimizer.param_groups[0]["fused"] is True


def test_accumulated_steps_report_the_mean_of_their_micro_steps(
    tiny_sdxl: Path, color_pairs: Path, tmp_path: Path
) -> None:
    """The loop keeps a step's terms as tensors and reads them once at the step's end."""
    events: list[Event] = []
    spec = tiny_spec(tiny_sdxl, method="dpo", gradient_accumulation_steps=2, max_train_steps=2)
    train(spec, color_pairs, tmp_path, on_event=events.append)
    steps = [e for e in events if isinstance(e, Step)]
    assert [s.step for s in steps] == [1, 2]
    for step in steps:
        assert all(isinstance(v, float) for v in step.metrics.values())
        assert {"loss", "grad_norm", "lr", "step_time_s"} <= set(step.metrics)
        assert step.metrics["grad_norm"] > 0.0


def test_dpo_s_folded_reference_equals_the_separate_pass(tiny_model: Path) -> None:
    loaded = _with_lora(tiny_model)
    generator = torch.Generator().manual_seed(1)
    side = 32 // loaded.vae_scale_factor
    latents = torch.randn(4, loaded.latent_channels, side, side, generator=generator)
    inputs = PairInputs(latents, loaded.encode_prompts(["a", "b"]), ImageGeometry.uncropped(2, 32))
    noise = torch.randn(2, *latents.shape[1:], generator=generator)
    levels = loaded.draw_levels(2, latents=latents)
    policy, reference = folded_errors(loaded.denoiser, loaded, inputs, noise=noise, levels=levels)
    separate = denoising_errors(loaded.denoiser, loaded, inputs, noise=noise, levels=levels)
    loaded.denoiser.disable_adapters()
    with torch.no_grad():
        base = denoising_errors(loaded.denoiser, loaded, inputs, noise=noise, levels=levels)
    loaded.denoiser.enable_adapters()
    assert not torch.allclose(separate, base), "the LoRA must change the errors for this to test anything"
    torch.testing.assert_close(policy, separate, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(reference, base, rtol=1e-4, atol=1e-6)
    assert not reference.requires_grad
    unfolded = reference_errors(loaded.denoiser, loaded, inputs, noise, levels)
    torch.testing.assert_close(unfolded, base)
    assert not unfolded.requires_grad and not unfolded.is_inference(), "an ordinary tensor for the loss"
    trainable = [p for p in loaded.denoiser.parameters() if p.requires_grad]
    # Qwen-Image's last block drops its text stream, so that LoRA gets no gradient (zeros here).
    options = {"allow_unused": True, "materialize_grads": True}
    folded_grads = torch.autograd.grad(policy.sum(), trainable, **options)
    separate_grads = torch.autograd.grad(separate.sum(), trainable, **options)
    for folded, plain in zip(folded_grads, separate_grads, strict=True):
        torch.testing.assert_close(folded, plain, rtol=1e-3, atol=1e-6)


def test_the_mask_is_gone_after_the_folded_pass(tiny_sdxl: Path) -> None:
    family = _with_lora(tiny_sdxl)
    before = _errors(family, family.denoiser).detach()
    with lora_masked(family.denoiser, torch.tensor([False, False, False, False])):
        masked = _errors(family, family.denoiser).detach()
    assert not torch.allclose(masked, before)
    torch.testing.assert_close(_errors(family, family.denoiser).detach(), before)


def test_the_reference_is_folded_on_the_cpu_at_small_sizes_without_checkpointing_only() -> None:
    at_64_px, at_128_px = torch.zeros(4, 4, 8, 8), torch.zeros(4, 4, 16, 16)
    assert fold_reference_pays(CPU, False, at_64_px)
    assert not fold_reference_pays(CPU, False, at_128_px)
    assert not fold_reference_pays(CPU, True, at_64_px)
    assert not fold_reference_pays(CUDA, False, at_64_px)


def test_the_variants_bench_times_every_variant_against_the_floor(tiny_sdxl: Path) -> None:
    from bench.floor_variants import time_variants

    config = {"model": str(tiny_sdxl), "family": "sdxl", "preset": "tiny", "resolution": 32}
    rows = time_variants({**config, "rounds": 1, "warmup": 0})
    assert [row["variant"] for row in rows] == [
        "floor",
        "peft's LoRA forward",
        "bf16 autocast",
        "bf16 fpmath (oneDNN)",
        "channels_last",
        "floor + update",
        "floor + update, foreach",
        "dpo: separate ref",
        "dpo: separate, peft switch",
        "dpo: folded ref",
    ]
    assert all(row["step_ms"] > 0 for row in rows)


def test_the_update_bench_times_every_adamw_of_the_trainer_s_lora(tiny_sdxl: Path) -> None:
    from bench.lora_update import IMPLEMENTATIONS, lora_parameters, time_updates

    params = lora_parameters(str(tiny_sdxl))
    assert params and all(p.requires_grad for p in params)
    before = [p.detach().clone() for p in params]
    medians = time_updates(params, rounds=1, steps=2)
    assert list(medians) == [*IMPLEMENTATIONS, "clip only"]
    assert all(seconds > 0 for seconds in medians.values())
    assert any(not torch.equal(p, b) for p, b in zip(params, before, strict=True)), "the updates ran"

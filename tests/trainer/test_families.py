"""Every model family through the one interface the engine uses, on its tiny offline model."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

from tests.support.adapters import adapter_files
from trainer import losses
from trainer.errors import ModelLoadError
from trainer.export import from_kohya
from trainer.families import FAMILIES
from trainer.families.base import ImageGeometry, ModelFamily
from trainer.families.registry import load_family
from trainer.lora import attach_lora, trainable_parameters
from trainer.objective import PairInputs, denoising_errors, training_loss
from trainer.spec import SpecConflict, TrainSpec

CPU = torch.device("cpu")


@pytest.fixture
def family(tiny_model: Path) -> ModelFamily:
    loaded = load_family(str(tiny_model), device=CPU, weight_dtype=torch.float32)
    attach_lora(loaded.denoiser, rank=4, alpha=4.0, dropout=0.0, targets=list(loaded.default_lora_targets))
    return loaded


def pair_inputs(family: ModelFamily, *, same_images: bool = False, seed: int = 0) -> PairInputs:
    """Two pairs of random latents at 32 px; `same_images` makes each rejected image its chosen one."""
    generator = torch.Generator().manual_seed(seed)
    side = 32 // family.vae_scale_factor
    chosen = torch.randn(2, family.latent_channels, side, side, generator=generator)
    rejected = chosen.clone() if same_images else torch.randn(chosen.shape, generator=generator)
    conditioning = family.encode_prompts(["a red circle", "a blue square"])
    return PairInputs(torch.cat([chosen, rejected]), conditioning, ImageGeometry.uncropped(2, 32))


def spec_for(family: ModelFamily, **fields: object) -> TrainSpec:
    return TrainSpec.model_validate({"base_model": family.source, "mixed_precision": "no", **fields})


def test_the_family_is_read_from_the_folder_never_from_its_name(tiny_flux: Path, tmp_path: Path) -> None:
    misleading = shutil.copytree(tiny_flux, tmp_path / "stable-diffusion-xl-base-1.0")
    assert load_family(str(misleading), device=CPU, weight_dtype=torch.float32).name == "flux"
    (misleading / "model_index.json").write_text('{"_class_name": "KandinskyPipeline"}')
    with pytest.raises(ModelLoadError, match="KandinskyPipeline"):
        load_family(str(misleading), device=CPU, weight_dtype=torch.float32)


def test_noisy_input_and_target_follow_each_family_s_formula(family: ModelFamily) -> None:
    latents, noise = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    if family.facts.objective == "flow_matching":
        sigmas = torch.tensor([0.2, 0.9])
        noised = family.add_noise(latents, noise, sigmas)
        s = sigmas.reshape(2, 1, 1, 1)
        torch.testing.assert_close(noised.noisy, (1 - s) * latents + s * noise)
        torch.testing.assert_close(noised.target, noise - latents)
        return
    timesteps = torch.tensor([10, 900])
    noised = family.add_noise(latents, noise, timesteps)
    alpha_bar = family.scheduler.alphas_cumprod[timesteps].reshape(2, 1, 1, 1)
    torch.testing.assert_close(noised.noisy, alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise)
    torch.testing.assert_close(noised.target, noise)  # the tiny models predict epsilon


def test_latents_are_normalised_as_the_pipelines_decode_them(family: ModelFamily) -> None:
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    mean, _ = family.encode_pixels(pixels)
    latents = family.to_latents(mean)
    assert latents.shape == (
        2,
        family.latent_channels,
        32 // family.vae_scale_factor,
        32 // family.vae_scale_factor,
    )
    torch.testing.assert_close(family.from_latents(latents), mean)
    decoded = family.decode_latents(latents)  # each family's test checks it against its pipeline
    assert decoded.shape == pixels.shape and bool(decoded.isfinite().all())
    # The tiny VAEs are calibrated as a trained one is: latents of about unit variance.
    assert 0.3 < float(latents.std()) < 3.0


def test_the_kl_families_shift_and_scale_latents_by_the_vae_s_config(family: ModelFamily) -> None:
    if "shift_factor" not in family.vae.config and "scaling_factor" not in family.vae.config:
        pytest.skip(f"{family.name}'s VAE normalises its latents otherwise (its own to_latents)")
    sample = torch.randn(1, family.latent_channels, 4, 4)
    shift = family.vae.config.shift_factor or 0.0
    torch.testing.assert_close(family.to_latents(sample), (sample - shift) * family.vae.config.scaling_factor)
    assert (shift != 0.0) == (family.facts.objective == "flow_matching")


def test_dpo_at_lora_init_is_ln_2(family: ModelFamily) -> None:
    loss, metrics = training_loss(
        spec_for(family, method="dpo"), family.denoiser, family, pair_inputs(family)
    )
    assert float(loss.detach()) == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["chosen_loss"] == pytest.approx(metrics["ref_chosen_loss"])


def test_a_batch_whose_images_tie_gives_mapo_s_tie_value(family: ModelFamily) -> None:
    spec = spec_for(family, method="mapo")
    loss, metrics = training_loss(spec, family.denoiser, family, pair_inputs(family, same_images=True))
    assert metrics["chosen_loss"] == pytest.approx(metrics["rejected_loss"])
    assert float(loss.detach()) == pytest.approx(metrics["chosen_loss"] + spec.beta * math.log(2), rel=1e-5)


def test_mapo_steps_lower_the_loss_and_widen_the_margin(family: ModelFamily) -> None:
    """On one fixed batch (fixed noise and levels): the chosen error falls faster than the rejected."""
    inputs = pair_inputs(family, seed=1)
    noise = torch.randn(inputs.latents[:2].shape, generator=torch.Generator().manual_seed(2))
    levels = family.draw_levels(2, latents=inputs.latents)
    optimizer = torch.optim.Adam(trainable_parameters(family.denoiser), lr=3e-3)

    def mapo() -> losses.MapoResult:
        chosen, rejected = denoising_errors(
            family.denoiser, family, inputs, noise=noise, levels=levels
        ).chunk(2)
        return losses.mapo_loss(chosen, rejected, num_train_timesteps=family.margin_scale)

    with torch.no_grad():
        first = mapo()
    for _ in range(25):
        optimizer.zero_grad()
        mapo().loss.backward()
        optimizer.step()
    with torch.no_grad():
        last = mapo()
    assert float(last.loss) < float(first.loss)
    assert float(last.rejected_loss - last.chosen_loss) > float(first.rejected_loss - first.chosen_loss)


def test_sd3_trains_without_t5_on_zeros_in_its_place(tiny_sd3: Path) -> None:
    with_t5 = load_family(str(tiny_sd3), device=CPU, weight_dtype=torch.float32)
    without = load_family(str(tiny_sd3), device=CPU, weight_dtype=torch.float32, options={"use_t5": False})
    assert len(with_t5.text_encoders) == 3 and len(without.text_encoders) == 2
    embeds = without.encode_prompts(["a red circle"])["prompt_embeds"]
    assert embeds.shape[1] == 77 + 77 and embeds[:, 77:].eq(0).all()
    torch.testing.assert_close(
        embeds[:, :77], with_t5.encode_prompts(["a red circle"])["prompt_embeds"][:, :77]
    )


def test_a_field_of_another_family_is_refused_naming_it() -> None:
    spec = TrainSpec(base_model="x", use_t5=False, guidance=2.0)
    with pytest.raises(
        SpecConflict, match="guidance applies to flux, flux2 base models, not to sd3"
    ) as caught:
        spec.check_family("sd3")
    assert caught.value.field == "guidance"
    with pytest.raises(SpecConflict, match="use_t5"):
        TrainSpec(base_model="x", use_t5=False).check_family("sdxl")
    TrainSpec(base_model="x", weighting_scheme="cosmap", guidance=1.0).check_family("flux")


def draw(folder: Path, adapter: Path | None) -> torch.Tensor:
    pipeline = DiffusionPipeline.from_pretrained(str(folder))
    if adapter is not None:
        pipeline.load_lora_weights(str(adapter.parent), weight_name=adapter.name)
    generator = torch.Generator().manual_seed(0)
    kwargs = {"height": 32, "width": 32, "num_inference_steps": 2}  # every other argument its default
    images: torch.Tensor = pipeline(
        prompt="a red circle", output_type="pt", generator=generator, **kwargs
    ).images
    return images


def test_the_diffusers_adapter_loads_into_the_family_s_pipeline_and_changes_its_images(
    tiny_model: Path, tmp_path: Path
) -> None:
    folder = tiny_model
    files = adapter_files(folder, tmp_path / "adapter")
    family, adapter = files.family, files.diffusers
    assert type(DiffusionPipeline.from_pretrained(str(folder))).__name__ in family.facts.pipeline_classes
    assert not torch.allclose(draw(folder, adapter), draw(folder, None))


def test_the_flux_comfyui_file_converts_in_diffusers_to_identical_images(
    tiny_flux: Path, tmp_path: Path
) -> None:
    files = adapter_files(tiny_flux, tmp_path / "adapter")
    adapter, kohya = files.diffusers, files.comfyui
    assert all(k.startswith("lora_transformer_") for k in load_file(str(kohya)))
    torch.testing.assert_close(draw(tiny_flux, kohya), draw(tiny_flux, adapter))


def test_the_sd3_comfyui_file_names_every_adapted_module_and_round_trips(
    tiny_sd3: Path, tmp_path: Path
) -> None:
    # diffusers' SD3 loader reads no ComfyUI naming, so the file is checked against the model itself.
    files = adapter_files(tiny_sd3, tmp_path / "adapter")
    family, adapter, kohya = files.family, files.diffusers, files.comfyui
    modules = [name for name, _ in family.denoiser.named_modules()]
    state, alpha = from_kohya(load_file(str(kohya)), modules, prefix="lora_transformer_")
    diffusers = load_file(str(adapter))
    assert alpha == 2.0 and len(state) == len(diffusers)
    for key, value in diffusers.items():
        module = key.removeprefix("transformer.").replace(".lora_A.weight", ".lora.down.weight")
        torch.testing.assert_close(state[module.replace(".lora_B.weight", ".lora.up.weight")], value)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_resolution_off_the_family_s_multiple_is_refused_naming_it(name: str) -> None:
    facts = FAMILIES[name]
    # Every flow family cuts its latents (VAE factor 8) into 2x2 patches: FLUX, SD3 and the newer ones.
    assert facts.resolution_multiple == (16 if facts.objective == "flow_matching" else 8)
    TrainSpec(base_model="x", resolution=facts.resolution_multiple * 5).check_family(name)
    off = TrainSpec(base_model="x", resolution=facts.resolution_multiple * 5 + 8)
    if facts.resolution_multiple == 8:
        off.check_family(name)
        return
    with pytest.raises(SpecConflict, match=f"multiple of 16 for .*, got {off.resolution}") as caught:
        off.check_family(name)
    assert caught.value.field == "resolution"

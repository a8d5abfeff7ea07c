"""TrainSpec: reference defaults, and every bad combination named by its field before any GPU time."""

from __future__ import annotations

import sys

import pytest
from pydantic import ValidationError

from trainer.families.sdxl import SDXLFamily
from trainer.spec import SpecConflict, TrainSpec


def _field_of(error: ValidationError) -> str:
    """A SpecConflict carries the full dotted field; other errors locate it in `loc`."""
    first = error.errors()[0]
    conflict = first.get("ctx", {}).get("error")
    if isinstance(conflict, SpecConflict):
        return conflict.field
    return ".".join(str(part) for part in first["loc"])


def test_defaults_follow_the_reference_recipe() -> None:
    spec = TrainSpec(base_model="stabilityai/stable-diffusion-xl-base-1.0")
    assert (spec.method, spec.beta, spec.gamma, spec.learning_rate) == ("mapo", 0.1, 0.5, 1e-5)
    assert (spec.train_batch_size, spec.gradient_accumulation_steps, spec.max_train_steps) == (8, 2, 2000)
    assert (spec.lora_rank, spec.effective_lora_alpha, spec.mixed_precision) == (8, 8.0, "fp16")
    # None: the family's targets, which for the UNet families are the reference's.
    assert spec.lora_target_modules is None
    assert SDXLFamily.default_lora_targets == ("to_q", "to_k", "to_v", "to_out.0")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"learning_rate": -1e-4}, "learning_rate"),
        ({"method": "ppo"}, "method"),
        ({"resolution": 100}, "resolution"),
        ({"lr_warmup_steps": 10}, "lr_warmup_steps"),
        ({"lr_scheduler": "linear", "lr_warmup_steps": 10, "max_train_steps": 5}, "lr_warmup_steps"),
        ({"cache_latents": True, "random_crop": True}, "random_crop"),
        ({"eval_every_n_steps": 5}, "eval_every_n_steps"),
        ({"lora_target_modules": []}, "lora_target_modules"),
        ({"validation": {"every_n_steps": 10}}, "validation.every_n_steps"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"unknown_field": 1}, "unknown_field"),
    ],
)
def test_invalid_specs_name_the_offending_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as error:
        TrainSpec.model_validate({"base_model": "m", **overrides})
    assert _field_of(error.value) == field
    assert field.split(".")[-1] in str(error.value)


def test_spec_module_does_not_import_torch() -> None:
    assert "trainer.spec" in sys.modules
    import subprocess

    code = "import trainer.spec, trainer.dataset_format, trainer.events, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_latent_cache_is_on_unless_the_spec_makes_it_impossible_or_turns_it_off() -> None:
    assert TrainSpec(base_model="m").latent_cache() == (True, "on by default")
    cached, reason = TrainSpec(base_model="m", random_crop=True).latent_cache()
    assert not cached and "random_crop" in reason
    assert TrainSpec(base_model="m", cache_latents=False).latent_cache() == (
        False,
        "cache_latents is false in the spec",
    )

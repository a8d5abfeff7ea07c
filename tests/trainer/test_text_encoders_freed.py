"""With the latent cache, a session frees its text encoders once everything it conditions on is encoded:
the training and held-out pairs, and the validation prompts, which the pipeline then draws from their
embeddings. Without the cache every step encodes its prompts, and the encoders stay."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.specs import tiny_spec
from trainer.events import Event, Sample
from trainer.families.base import ModelFamily
from trainer.families.registry import load_base as real_load_base
from trainer.families.registry import load_family
from trainer.sampling import PromptEmbeddings, Renderer
from trainer.session import open_session
from trainer.spec import TrainSpec
from trainer.synthetic.tiny import build_tiny_pipeline

VALIDATION = {"prompts": ["a red circle", "a blue square"], "num_inference_steps": 2, "seed": 3}


def _spec(base: Path, **overrides: object) -> TrainSpec:
    return tiny_spec(base, eval_fraction=0.25, validation=VALIDATION, **overrides)


def _open_watching_encoders(
    spec: TrainSpec, dataset: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, list[weakref.ref[Any]]]:
    """open_session, with a weak reference to each text encoder the real load_base loaded."""
    encoders: list[weakref.ref[Any]] = []

    def load_base(*args: Any, **kwargs: Any) -> ModelFamily:
        model = real_load_base(*args, **kwargs)
        encoders.extend(weakref.ref(encoder) for encoder in model.text_encoders)
        return model

    monkeypatch.setattr("trainer.session.load_base", load_base)
    opened = open_session(spec, dataset, out)
    gc.collect()
    return opened, encoders


def _pixels(image: Any) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_cached_session_frees_its_text_encoders_and_still_validates_and_evaluates(
    family_name: str, tiny_model: Path, color_pairs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(tiny_model)
    opened, encoders = _open_watching_encoders(spec, color_pairs, tmp_path, monkeypatch)

    assert encoders and all(ref() is None for ref in encoders), "a text encoder is still referenced"
    assert opened.model.text_encoders == []
    events: list[Event] = []
    opened.run_validation(step=0, emit=events.append, initial=True)
    opened.run_evaluation(step=0, emit=events.append, force=True)
    drawn = [image for event in events if isinstance(event, Sample) for image in event.images]
    assert [image.prompt for image in drawn] == VALIDATION["prompts"]
    metrics = next(event.metrics for event in events if hasattr(event, "metrics"))
    assert all(np.isfinite(value) for value in metrics.values())

    # The same prompts drawn from their text, by a pipeline with its text encoders (the LoRA is off at
    # step 0, so the base model draws both).
    family = load_family(str(tiny_model), device=torch.device("cpu"), weight_dtype=torch.float32)
    with_encoders = Renderer.build(family, family.denoiser)
    validation = spec.validation
    for index, image in enumerate(drawn):
        expected = with_encoders.image(
            image.prompt,
            seed=validation.seed + index,
            resolution=opened.resolution,
            num_inference_steps=validation.num_inference_steps,
            guidance_scale=validation.guidance_scale,
        )
        difference = np.abs(_pixels(Image.open(image.path)) - _pixels(expected)).max()
        assert difference <= 1, f"{image.prompt!r} differs by {difference} levels from its text's image"


def test_uncached_session_keeps_its_text_encoders(
    tiny_sdxl: Path, color_pairs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(tiny_sdxl, cache_latents=False)
    opened, encoders = _open_watching_encoders(spec, color_pairs, tmp_path, monkeypatch)

    assert len(encoders) == 2 and all(ref() is not None for ref in encoders)
    assert opened.model.text_encoders == [ref() for ref in encoders]
    assert opened.prompt_embeddings is None


def test_prompt_embeddings_name_a_prompt_not_encoded_up_front(tiny_sd: Path) -> None:
    family = load_family(str(tiny_sd), device=torch.device("cpu"), weight_dtype=torch.float32)
    embeddings = PromptEmbeddings.encode(family, ["a red circle", "a blue square"])

    both = embeddings.of(["a blue square", "a red circle"])
    assert torch.equal(both["prompt_embeds"][0], embeddings.conditioning["prompt_embeds"][1])
    with pytest.raises(KeyError, match="a green star"):
        embeddings.of(["a green star"])


def test_flux_true_guidance_draws_the_same_from_embeddings_as_from_text(tmp_path: Path) -> None:
    """A FLUX without a guidance embedding (schnell, the shapes base) guides against the encoded "": the
    negative must come as embeddings too, in place of the text "" that `sampling_arguments` names."""
    base = build_tiny_pipeline("flux", tmp_path / "flux-schnell-like", shapes_base=True)
    family = load_family(str(base), device=torch.device("cpu"), weight_dtype=torch.float32)
    assert family.guides_against_negative(4.0)
    prompts = ["a red circle"]
    from_text = Renderer.build(family, family.denoiser)
    from_embeddings = Renderer.build(family, family.denoiser, PromptEmbeddings.encode(family, prompts))
    drawn = [
        renderer.image(prompts[0], seed=1, resolution=32, num_inference_steps=2, guidance_scale=4.0)
        for renderer in (from_text, from_embeddings)
    ]
    assert np.abs(_pixels(drawn[0]) - _pixels(drawn[1])).max() <= 1


def test_a_batch_of_prompts_of_different_lengths_draws_the_same_from_embeddings(tiny_model: Path) -> None:
    """Several prompts in one call: the rows batch, the negative repeats, the masks pad the shorter one."""
    family = load_family(str(tiny_model), device=torch.device("cpu"), weight_dtype=torch.float32)
    prompts = ["a red circle", "a small blue square beside a large green triangle on a white background"]
    renderers = (
        Renderer.build(family, family.denoiser),
        Renderer.build(family, family.denoiser, PromptEmbeddings.encode(family, prompts)),
    )
    from_text, from_embeddings = (
        renderer.images(prompts, seeds=[1, 2], resolution=32, num_inference_steps=2, guidance_scale=5.0)
        for renderer in renderers
    )
    for text_image, embeddings_image in zip(from_text, from_embeddings, strict=True):
        assert np.abs(_pixels(text_image) - _pixels(embeddings_image)).max() <= 1

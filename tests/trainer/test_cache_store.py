"""A job keeps its latent cache beside its checkpoints, so a resumed job encodes nothing again; a cache
whose key (pairs, model, resolution, flip, text settings) no longer fits is built anew (issue 32)."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from tests.support.specs import tiny_spec
from trainer.cache_store import CACHE_DIR, CacheStore
from trainer.data import Augment, load_pairs
from trainer.dataset_format import DatasetWriter, EncodedImage
from trainer.encoding import LatentCache
from trainer.events import Caching, Event, Step
from trainer.families.base import ModelFamily
from trainer.families.registry import load_family
from trainer.loop import train

CPU = torch.device("cpu")
AUGMENT = Augment(32, random_crop=False, hflip=True)


@contextmanager
def _encoder_calls() -> Iterator[list[str]]:
    """Class names of every VAE encoder and text encoder forward while inside, from every model."""
    calls: list[str] = []

    def record(module: torch.nn.Module, _: Any) -> None:
        name = type(module).__name__
        if name == "Encoder" or name.endswith("TextModel") or name.endswith("TextModelWithProjection"):
            calls.append(name)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        yield calls
    finally:
        handle.remove()


def _store(tmp_path: Path, family: ModelFamily, **overrides: Any) -> CacheStore:
    fields: dict[str, Any] = {
        "folder": tmp_path / "out" / CACHE_DIR,
        "base_model": family.source,
        "options": {},
        "writes": True,
        **overrides,
    }
    return CacheStore(**fields)


@pytest.fixture
def sd(tiny_sd: Path) -> ModelFamily:
    return load_family(str(tiny_sd), device=CPU, weight_dtype=torch.float32)


def _png(color: tuple[int, int, int], size: tuple[int, int] = (40, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def _white_mask() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (40, 32), 255).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def masked_pairs(tmp_path: Path) -> Path:
    """Three pairs, the middle one without a mask."""
    root = tmp_path / "masked"
    with DatasetWriter(root) as writer:
        for i in range(3):
            writer.add_pair(
                f"pair {i}",
                chosen=EncodedImage(_png((200, 40 * i, 0))),
                rejected=EncodedImage(_png((0, 40 * i, 200))),
                mask=None if i == 1 else EncodedImage(_white_mask()),
            )
    return root


def _assert_same_cache(a: LatentCache, b: LatentCache) -> None:
    assert a.prompts == b.prompts
    for left, right in [(a.means, b.means), (a.stds, b.stds)]:
        assert all(torch.equal(x, y) for x, y in zip(left, right, strict=True))
    assert torch.equal(a.original_sizes, b.original_sizes) and torch.equal(a.crop_top_lefts, b.crop_top_lefts)
    assert a.conditioning.tensors.keys() == b.conditioning.tensors.keys()
    assert all(torch.equal(a.conditioning[k], b.conditioning[k]) for k in a.conditioning.tensors)
    masks_a, masks_b = a.masks or [], b.masks or []
    assert [m is None for m in masks_a] == [m is None for m in masks_b]
    pairs = [(x, y) for x, y in zip(masks_a, masks_b, strict=True) if x is not None and y is not None]
    assert all(torch.equal(x, y) for x, y in pairs)


def test_a_stored_cache_loads_as_it_was_built_without_encoding(
    sd: ModelFamily, masked_pairs: Path, tmp_path: Path
) -> None:
    store, pairs = _store(tmp_path, sd), load_pairs(masked_pairs)
    with _encoder_calls() as first:
        built = store.load_or_build(sd, masked_pairs, pairs, AUGMENT)
    with _encoder_calls() as second:
        loaded = store.load_or_build(sd, masked_pairs, pairs, AUGMENT)
    assert first and not second, "the second call reads the stored cache"
    _assert_same_cache(built, loaded)


@pytest.mark.parametrize(
    "change",
    ["resolution", "hflip", "pairs", "base_model", "options"],
)
def test_a_cache_whose_key_changed_is_built_again(
    sd: ModelFamily, color_pairs: Path, tmp_path: Path, change: str
) -> None:
    pairs = load_pairs(color_pairs)
    _store(tmp_path, sd).load_or_build(sd, color_pairs, pairs, AUGMENT)
    store, augment = _store(tmp_path, sd), AUGMENT
    if change == "resolution":
        augment = Augment(48, random_crop=False, hflip=True)
    elif change == "hflip":
        augment = Augment(32, random_crop=False, hflip=False)
    elif change == "pairs":
        pairs = pairs[1:]
    elif change == "base_model":
        store = _store(tmp_path, sd, base_model=f"{sd.source}-other")
    else:
        store = _store(tmp_path, sd, options={"use_t5": False})
    with _encoder_calls() as calls:
        store.load_or_build(sd, color_pairs, pairs, augment)
    assert calls, f"a changed {change} encodes again"


def test_an_image_rewritten_under_the_same_name_is_encoded_again(
    sd: ModelFamily, color_pairs: Path, tmp_path: Path
) -> None:
    root = shutil.copytree(color_pairs, tmp_path / "pairs")
    pairs = load_pairs(root)
    _store(tmp_path, sd).load_or_build(sd, root, pairs, AUGMENT)
    (root / pairs[0].chosen).write_bytes(_png((1, 2, 3), (80, 64)))
    with _encoder_calls() as calls:
        _store(tmp_path, sd).load_or_build(sd, root, pairs, AUGMENT)
    assert calls


def test_an_unreadable_stored_cache_is_built_again(
    sd: ModelFamily, color_pairs: Path, tmp_path: Path
) -> None:
    store, pairs = _store(tmp_path, sd), load_pairs(color_pairs)
    built = store.load_or_build(sd, color_pairs, pairs, AUGMENT)
    for path in store.folder.iterdir():
        path.write_bytes(path.read_bytes()[:100])
    with _encoder_calls() as calls:
        again = store.load_or_build(sd, color_pairs, pairs, AUGMENT)
    assert calls
    _assert_same_cache(built, again)


def test_a_process_that_does_not_write_leaves_no_file(
    sd: ModelFamily, color_pairs: Path, tmp_path: Path
) -> None:
    store = _store(tmp_path, sd, writes=False)
    store.load_or_build(sd, color_pairs, load_pairs(color_pairs), AUGMENT)
    assert not store.folder.exists() or not any(store.folder.iterdir())


def _train(spec: Any, dataset: Path, out: Path, *, stop_after: int | None = None) -> list[Event]:
    events: list[Event] = []

    def should_stop() -> bool:
        return stop_after is not None and sum(isinstance(e, Step) for e in events) >= stop_after

    train(spec, dataset, out, on_event=events.append, should_stop=should_stop)
    return events


def test_a_resumed_job_encodes_nothing_and_a_finished_one_leaves_no_cache(
    tiny_sd: Path, color_pairs: Path, tmp_path: Path
) -> None:
    spec = tiny_spec(tiny_sd, max_train_steps=4, eval_fraction=0.25)
    with _encoder_calls() as first_calls:
        first = _train(spec, color_pairs, tmp_path, stop_after=2)
    assert first_calls and any(isinstance(e, Caching) for e in first)
    assert any((tmp_path / CACHE_DIR).iterdir()), "a stopped job keeps its cache for the resume"
    with _encoder_calls() as resumed_calls:
        resumed = _train(spec, color_pairs, tmp_path)
    assert not resumed_calls, "neither the training pairs nor the held-out ones are encoded again"
    assert not any(isinstance(e, Caching) for e in resumed)
    assert [e.step for e in resumed if isinstance(e, Step)] == [3, 4]
    assert not (tmp_path / CACHE_DIR).exists(), "a finished job will not resume: its cache goes"


def test_a_resumed_job_with_another_resolution_encodes_again(
    tiny_sd: Path, color_pairs: Path, tmp_path: Path
) -> None:
    _train(tiny_spec(tiny_sd, max_train_steps=4), color_pairs, tmp_path, stop_after=2)
    with _encoder_calls() as calls:
        events = _train(tiny_spec(tiny_sd, max_train_steps=4, resolution=48), color_pairs, tmp_path)
    assert calls and any(isinstance(e, Caching) for e in events)

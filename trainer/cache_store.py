"""A job's latent caches on disk, beside its checkpoints: <output_dir>/cache/latents-<key digest>.safetensors.

Encoding every pair through the VAE and the text encoders is what a job pays at start-up, and a resumed
job (after a kill, a preemption, a stop) would pay it again for the same latents. So the first run stores
what it encoded, and a later run with the same key reads it back instead. The key is everything that
decides the cache's content: the pairs themselves (prompts, file names and the bytes of every image and
mask, so an image rewritten under its old name is not mistaken for the old one), the base model and its
VAE config, the resolution, the flip, the text settings (text length, the text encoders' classes, dtypes
and quantization) and the spec's family options. A file whose key differs, or that cannot be read, is
ignored and the cache built again; the file is written under a temporary name and renamed, so no reader
sees half.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from trainer.data import Augment
from trainer.dataset_format import PairRecord
from trainer.encoding import CacheProgress, LatentCache, build_cache
from trainer.families.base import Conditioning, ModelFamily

log = logging.getLogger(__name__)

CACHE_DIR = "cache"
# Raised whenever what a stored cache holds, or how, changes: older files then no longer fit any key.
CACHE_FORMAT = 1
_CONDITIONING = "conditioning."
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class CacheStore:
    """A job's cache folder and the job's share of the key. Every process reads; the one that `writes`
    (the main process) stores what it had to build."""

    folder: Path
    base_model: str
    options: dict[str, Any] = field(default_factory=dict)
    writes: bool = True

    def load_or_build(
        self,
        family: ModelFamily,
        root: Path,
        pairs: list[PairRecord],
        augment: Augment,
        *,
        on_progress: CacheProgress | None = None,
    ) -> LatentCache:
        """The cache of `pairs` as stored under this key, or built (reporting `on_progress`) and stored."""
        key = self.key(family, root, pairs, augment)
        path = self.folder / f"latents-{_digest(key)}.safetensors"
        stored = load_cache(path, key)
        if stored is not None:
            return stored
        cache = build_cache(family, root, pairs, augment, on_progress=on_progress)
        if self.writes:
            save_cache(cache, path, key)
        return cache

    def key(
        self, family: ModelFamily, root: Path, pairs: list[PairRecord], augment: Augment
    ) -> dict[str, Any]:
        """What decides the content of the cache of `pairs` (JSON-ready). A setting that changes what the
        VAE or the text encoders produce belongs here."""
        return {
            "format": CACHE_FORMAT,
            "pairs": pairs_fingerprint(root, pairs),
            "base_model": self.base_model,
            "family": family.name,
            "vae": json.loads(json.dumps(dict(family.vae.config), sort_keys=True, default=str)),
            "resolution": augment.resolution,
            "hflip": augment.hflip,
            "random_crop": augment.random_crop,
            "text_length": family.text_length,
            "text_encoders": [_encoder_facts(encoder) for encoder in family.text_encoders],
            "options": json.loads(json.dumps(self.options, sort_keys=True, default=str)),
        }


def _encoder_facts(encoder: Any) -> dict[str, Any]:
    """What decides a text encoder's output beside its weights: class, dtype and any quantization (a
    quantized encoder keeps its compute dtype, so the dtype alone would not tell)."""
    quantization: Any = getattr(encoder.config, "quantization_config", None)
    if quantization is not None and hasattr(quantization, "to_dict"):
        quantization = quantization.to_dict()
    facts = {"class": type(encoder).__name__, "dtype": str(encoder.dtype), "quantization": quantization}
    normalised: dict[str, Any] = json.loads(json.dumps(facts, sort_keys=True, default=str))
    return normalised


def discard(output_dir: Path) -> None:
    """Remove a job's stored caches (a finished job will not resume, and they are as big as a dataset)."""
    shutil.rmtree(output_dir / CACHE_DIR, ignore_errors=True)


def pairs_fingerprint(root: Path, pairs: list[PairRecord]) -> str:
    """sha256 of the pairs in order: each one's row and the bytes of its images and mask."""
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(pair.model_dump_json().encode())
        for relative in (pair.chosen, pair.rejected, pair.mask):
            if relative is not None:
                _hash_file(digest, root / relative)
    return digest.hexdigest()


def _hash_file(digest: Any, path: Path) -> None:
    with path.open("rb") as handle:
        while chunk := handle.read(_READ_CHUNK):
            digest.update(chunk)


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def save_cache(cache: LatentCache, path: Path, key: dict[str, Any]) -> None:
    """Write `cache` to `path` atomically. A failure (a full disk, say) is logged, not raised: the job
    trains on with the cache in memory, and only a resume would encode again."""
    tensors, masked = _flat_tensors(cache)
    metadata = {"key": json.dumps(key, sort_keys=True), "prompts": json.dumps(cache.prompts)}
    metadata["masked"] = json.dumps(masked)
    temporary = path.with_name(f".tmp-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(temporary), metadata=metadata)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        log.warning("could not store the latent cache at %s (a resume will encode again): %s", path, exc)


def _flat_tensors(cache: LatentCache) -> tuple[dict[str, torch.Tensor], list[int] | None]:
    """The cache as one flat dict of contiguous tensors, and the indices of the pairs that have a mask
    (None for a cache without masks at all)."""
    tensors = {
        "means": torch.stack(cache.means),
        "stds": torch.stack(cache.stds),
        "original_sizes": cache.original_sizes,
        "crop_top_lefts": cache.crop_top_lefts,
        **{_CONDITIONING + name: value for name, value in cache.conditioning.tensors.items()},
    }
    masked = None
    if cache.masks is not None:
        masked = [i for i, mask in enumerate(cache.masks) if mask is not None]
        if masked:
            tensors["masks"] = torch.stack([mask for mask in cache.masks if mask is not None])
    return {name: value.contiguous() for name, value in tensors.items()}, masked


def load_cache(path: Path, key: dict[str, Any]) -> LatentCache | None:
    """The cache stored at `path` if it was stored under `key`; None if there is none, it has another
    key, or it cannot be read (it is then built again)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as stored:
            metadata = stored.metadata() or {}
            if json.loads(metadata.get("key", "null")) != json.loads(json.dumps(key, sort_keys=True)):
                return None
            tensors = {name: stored.get_tensor(name) for name in stored.keys()}  # noqa: SIM118
        return _from_flat(tensors, json.loads(metadata["prompts"]), json.loads(metadata["masked"]))
    except (OSError, SafetensorError, ValueError, KeyError) as exc:
        log.warning("ignoring the unreadable latent cache %s: %s", path, exc)
        return None


def _from_flat(tensors: dict[str, torch.Tensor], prompts: list[str], masked: list[int] | None) -> LatentCache:
    masks: list[torch.Tensor | None] | None = None
    if masked is not None:
        masks = [None] * len(prompts)
        for index, mask in zip(masked, tensors["masks"].unbind(0) if masked else (), strict=True):
            masks[index] = mask
    conditioning = {
        name.removeprefix(_CONDITIONING): value
        for name, value in tensors.items()
        if name.startswith(_CONDITIONING)
    }
    return LatentCache(
        means=list(tensors["means"].unbind(0)),
        stds=list(tensors["stds"].unbind(0)),
        conditioning=Conditioning(conditioning),
        prompts=prompts,
        original_sizes=tensors["original_sizes"],
        crop_top_lefts=tensors["crop_top_lefts"],
        masks=masks,
    )

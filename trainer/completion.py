"""Completing a targets or avoid dataset into pairs: the base model draws each pair's missing image.

A targets dataset holds the images a user wants (the chosen side), an avoid dataset the images to steer
away from (the rejected side). Before training, the base model draws the other side of every pair from the
row's `generation_prompt` (or its prompt), each image from a seed of its own derived from the dataset and
the pair's index. The result is an ordinary pairs dataset,

    <dataset_dir>/generated/<key>/   manifest.json (written last), pairs.jsonl, generation.json, images/

where <key> hashes the base model (its location and its files' sizes and times), the resolution and the
generation settings: a resumed job, or any later job with the same base model and settings, finds the
folder and trains on it as it is. Each drawn image is stored (atomically) as soon as it is made, so an
interrupted completion keeps what it drew. Uploaded images are hard-linked in (copied where the
filesystem cannot link); the folder goes when the dataset is deleted.

With an object store, the worker uploads a completed folder beside the dataset (worker.staging) so that
other hosts find it too: `shared_files` leaves the uploaded images out (the store holds them once, as the
dataset's own files), and a found folder has them linked in again from the host's copy of the dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

from trainer.dataset_format import (
    GENERATED_DIR,
    IMAGES_DIR,
    MANIFEST_FILE,
    PAIRS_FILE,
    UPLOADED_ROLE,
    DatasetFormatError,
    Manifest,
    PairRecord,
    TargetRecord,
    read_manifest,
    read_targets,
    write_manifest,
)
from trainer.errors import GenerationError, InvalidDatasetError
from trainer.events import Event, Preparing
from trainer.families.registry import load_base
from trainer.sampling import Renderer
from trainer.spec import TrainSpec

GENERATION_RECORD = "generation.json"
PROGRESS_EVENTS = 20  # about this many progress events per completion, however many images it draws
_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
OneSided = Literal["targets", "avoid"]


class GenerationKey(BaseModel):
    """Everything the drawn images depend on; its hash names their folder."""

    model_config = ConfigDict(frozen=True)

    kind: OneSided
    base_model: str
    model_stamp: str
    resolution: int | None  # as the spec gives it; None = the base model's native size
    num_inference_steps: int
    guidance_scale: float
    seed_namespace: str
    # The base drawn at a quantized precision draws (slightly) other images. Left out of the digest when
    # None, so that folders drawn before the field existed keep their names.
    base_precision: str | None = None

    def digest(self) -> str:
        unset = {"base_precision"} if self.base_precision is None else set()
        return hashlib.sha256(self.model_dump_json(exclude=unset).encode()).hexdigest()[:16]


def _never() -> bool:
    return False


def complete_dataset(
    dataset_dir: Path,
    spec: TrainSpec,
    *,
    seed_namespace: str,
    on_event: Callable[[Event], None],
    should_stop: Callable[[], bool] = _never,
) -> Path | None:
    """The pairs dataset to train `spec` on: `dataset_dir` itself for a pairs dataset; for a targets or
    avoid one, its completed folder under generated/, drawn now or found from an earlier run.

    `seed_namespace` (the dataset id) and the pair index give each image's seed. `should_stop()` is polled
    before each image; None is returned when it answers True (the images drawn so far are kept). Emits
    `Preparing` progress events. Raises `InvalidDatasetError`, `ModelLoadError` or `GenerationError`.
    """
    try:
        manifest = read_manifest(dataset_dir)
        if manifest.kind == "pairs":
            return dataset_dir
        rows = read_targets(dataset_dir)
    except DatasetFormatError as exc:
        raise InvalidDatasetError(str(exc)) from exc
    kind: OneSided = manifest.kind
    key = GenerationKey(
        kind=kind,
        base_model=spec.base_model,
        model_stamp=_model_stamp(spec.base_model),
        resolution=spec.resolution,
        num_inference_steps=spec.generation.num_inference_steps,
        guidance_scale=spec.generation.guidance_scale,
        seed_namespace=seed_namespace,
        base_precision=spec.base_precision,
    )
    out = dataset_dir / GENERATED_DIR / key.digest()
    if (out / MANIFEST_FILE).is_file():
        _link_uploaded(dataset_dir, out, rows, kind)  # a folder from the object store comes without them
        on_event(Preparing(kind=kind, total=len(rows), ready=len(rows), generated=0, reused=len(rows)))
        return out
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    if not _draw_missing(rows, key, spec, out, on_event=on_event, should_stop=should_stop):
        return None
    _write_pairs(dataset_dir, out, rows, kind)
    return out


def shared_files(dataset_dir: Path, out: Path) -> list[Path]:
    """The files of `out`, a completed folder of the one-sided dataset at `dataset_dir`, that another
    host needs to train on it, the manifest last: all but the uploaded images (and writers' temporaries).
    Those are the dataset's own files, which that host has already; storing them again would double the
    dataset's bytes in the store, and in every host's download of it, for each base model it is drawn for.
    """
    manifest = read_manifest(dataset_dir)
    if manifest.kind == "pairs":
        raise ValueError(f"{dataset_dir} is a pairs dataset: it has no drawn images")
    kind: OneSided = manifest.kind
    uploaded = {_uploaded_path(out, kind, i, row) for i, row in enumerate(read_targets(dataset_dir))}
    files = sorted(p for p in out.rglob("*") if p.is_file() and p not in uploaded and not _is_temporary(p))
    return sorted(files, key=lambda p: p == out / MANIFEST_FILE)


def pair_seed(namespace: str, index: int) -> int:
    """The seed of pair `index`'s drawn image: fixed for a dataset, different for every pair."""
    return int.from_bytes(hashlib.sha256(f"{namespace}/{index}".encode()).digest()[:4], "big")


def drawn_image_path(out: Path, kind: OneSided, index: int) -> Path:
    """Where the base model's image of pair `index` is stored: the side the upload does not hold."""
    role = "rejected" if UPLOADED_ROLE[kind] == "chosen" else "chosen"
    return out / IMAGES_DIR / f"{index:06d}_{role}.png"


def _draw_missing(
    rows: list[TargetRecord],
    key: GenerationKey,
    spec: TrainSpec,
    out: Path,
    *,
    on_event: Callable[[Event], None],
    should_stop: Callable[[], bool],
) -> bool:
    """Draw every image not stored yet; False if stopped first. The model loads only if one is missing."""
    missing = [i for i in range(len(rows)) if not drawn_image_path(out, key.kind, i).is_file()]
    total, reused = len(rows), len(rows) - len(missing)
    every = max(1, total // PROGRESS_EVENTS)
    on_event(Preparing(kind=key.kind, total=total, ready=reused, generated=0, reused=reused))
    if not missing:
        return True
    drawer = _Drawer(spec)
    _write_record(out, key, drawer, rows)
    for generated, index in enumerate(missing, start=1):
        if should_stop():
            return False
        row = rows[index]
        image = drawer.draw(row.drawn_from, seed=pair_seed(key.seed_namespace, index))
        _store_png(image, drawn_image_path(out, key.kind, index))
        if generated % every == 0 or generated == len(missing):
            ready = reused + generated
            on_event(Preparing(kind=key.kind, total=total, ready=ready, generated=generated, reused=reused))
    drawer.release()
    return True


class _Drawer:
    """The base model as a text-to-image pipeline, loaded as the trainer loads it."""

    def __init__(self, spec: TrainSpec) -> None:
        cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if cuda else "cpu")
        self.dtype = _DTYPES[spec.mixed_precision if cuda else "no"]
        family = load_base(spec, self.device, self.dtype)
        self.resolution = spec.resolution or family.native_resolution
        self.settings = spec.generation
        self.renderer: Renderer | None = Renderer.build(family, family.denoiser)

    def draw(self, prompt: str, *, seed: int) -> Any:
        try:
            assert self.renderer is not None, "draw after release"
            return self.renderer.image(
                prompt,
                seed=seed,
                resolution=self.resolution,
                num_inference_steps=self.settings.num_inference_steps,
                guidance_scale=self.settings.guidance_scale,
            )
        except (RuntimeError, ValueError) as exc:
            raise GenerationError(f"the base model could not draw {prompt!r}: {exc}") from exc

    def release(self) -> None:
        """Free the pipeline before training loads the model again."""
        self.renderer = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _write_record(out: Path, key: GenerationKey, drawer: _Drawer, rows: list[TargetRecord]) -> None:
    """generation.json: the settings, the resolution, precision and device used, and each pair's prompt
    and seed, so that any drawn image can be reproduced."""
    record = {
        "settings": key.model_dump(),
        "resolution": drawer.resolution,
        "dtype": str(drawer.dtype).removeprefix("torch."),
        "device": drawer.device.type,
        "pairs": [
            {
                "index": index,
                "prompt": row.drawn_from,
                "seed": pair_seed(key.seed_namespace, index),
                "image": drawn_image_path(out, key.kind, index).relative_to(out).as_posix(),
            }
            for index, row in enumerate(rows)
        ],
    }
    _replace_text(out / GENERATION_RECORD, json.dumps(record, indent=2))


def _uploaded_path(out: Path, kind: OneSided, index: int, row: TargetRecord) -> Path:
    """Where pair `index`'s uploaded image is linked in: the side the base model does not draw."""
    return out / IMAGES_DIR / f"{index:06d}_{UPLOADED_ROLE[kind]}{Path(row.image).suffix}"


def _mask_path(index: int, uploaded_mask: str) -> str:
    """Where pair `index`'s uploaded mask is linked in, relative to the completed dataset."""
    return f"{IMAGES_DIR}/{index:06d}_mask{Path(uploaded_mask).suffix}"


def _link_uploaded(dataset_dir: Path, out: Path, rows: list[TargetRecord], kind: OneSided) -> None:
    """Link every uploaded image of `rows` into `out` that is not there yet."""
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    for index, row in enumerate(rows):
        _link(dataset_dir / row.image, _uploaded_path(out, kind, index, row))
        if row.mask is not None:
            _link(dataset_dir / row.mask, out / _mask_path(index, row.mask))


def _write_pairs(dataset_dir: Path, out: Path, rows: list[TargetRecord], kind: OneSided) -> None:
    """Link the uploaded images in, then write pairs.jsonl and, last, the manifest."""
    _link_uploaded(dataset_dir, out, rows, kind)
    lines = []
    for index, row in enumerate(rows):
        uploaded = _uploaded_path(out, kind, index, row).relative_to(out).as_posix()
        drawn = drawn_image_path(out, kind, index).relative_to(out).as_posix()
        chosen, rejected = (uploaded, drawn) if UPLOADED_ROLE[kind] == "chosen" else (drawn, uploaded)
        mask = None if row.mask is None else _mask_path(index, row.mask)
        record = PairRecord(prompt=row.prompt, chosen=chosen, rejected=rejected, mask=mask)
        lines.append(record.model_dump_json(exclude=None if mask else {"mask"}) + "\n")
    try:
        _replace_text(out / PAIRS_FILE, "".join(lines))
        write_manifest(out, Manifest(kind="pairs", num_pairs=len(rows)))
    except OSError as exc:
        raise GenerationError(f"cannot write the completed dataset in {out}: {exc}") from exc


def _store_png(image: Any, path: Path) -> None:
    """Write beside the target, then rename: a stored image is always whole."""
    tmp = _temporary(path)
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    except OSError as exc:
        raise GenerationError(f"cannot store the drawn image {path.name}: {exc}") from exc


def _link(source: Path, target: Path) -> None:
    if target.exists():
        return
    try:
        os.link(source, target)
    except FileExistsError:
        return  # another worker process linked it in meanwhile (they may share a cached dataset)
    except OSError:
        tmp = _temporary(target)
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)


def _replace_text(path: Path, text: str) -> None:
    tmp = _temporary(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _is_temporary(path: Path) -> bool:
    """A file being written: ours (`_temporary`) or the manifest's (`write_manifest`)."""
    return path.name.startswith(".") or path.name.endswith(".tmp")


def _temporary(path: Path) -> Path:
    """A name beside `path` of this writer's own: two workers completing the same dataset at once (two
    jobs started together) each rename whole files of identical content into place."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _model_stamp(source: str) -> str:
    """Sizes and modification times of a local model folder's files: a model replaced under the same
    path draws anew. A hub id is its own stamp (it is part of the key already)."""
    folder = Path(source)
    if not folder.is_dir():
        return ""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]

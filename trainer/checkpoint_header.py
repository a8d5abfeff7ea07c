"""What a base model's weights are, read from its safetensors headers alone (torch-free: the API plans jobs
with it, and reading a header costs a few kilobytes however large the checkpoint).

A safetensors file starts with an 8-byte little-endian length and that many bytes of JSON naming every
tensor's dtype and shape. A component folder (`unet/`, `transformer/`, `text_encoder_2/`...) holds one
file or several shards; a folder that also holds a dtype variant (`*.fp16.safetensors`) is counted once.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

HEADER_LENGTH_BYTES = 8
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit; a larger "header" is a corrupt file
VARIANT_MARKERS = (".fp16.", ".bf16.", ".fp32.")
# 2-D weights that are lookup tables, not linear layers: neither bitsandbytes nor torchao quantize them.
EMBEDDING_SUFFIXES = (
    "embedding.weight",
    "embeddings.weight",
    "embed_tokens.weight",
    "shared.weight",
    "relative_attention_bias.weight",
)


class CheckpointUnreadableError(ValueError):
    """A component folder holds no safetensors file, or one whose header is not valid."""


@dataclass(frozen=True)
class Linear:
    """One linear layer's weight: `name` is its module's dotted name (without `.weight`)."""

    name: str
    out_features: int
    in_features: int

    @property
    def weights(self) -> int:
        return self.out_features * self.in_features


@dataclass(frozen=True)
class ComponentWeights:
    """The parameters of one component: its linear layers (the ones a quantization replaces) and the
    count of every other element (norms, biases, convolutions, embeddings: they stay float)."""

    linears: tuple[Linear, ...]
    other_elements: int
    largest_file_bytes: int

    @property
    def linear_elements(self) -> int:
        return sum(layer.weights for layer in self.linears)

    @property
    def elements(self) -> int:
        return self.linear_elements + self.other_elements


def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every tensor of the safetensors file `path`: name -> (dtype, shape)."""
    with path.open("rb") as file:
        prefix = file.read(HEADER_LENGTH_BYTES)
        if len(prefix) != HEADER_LENGTH_BYTES:
            raise CheckpointUnreadableError(f"{path} is too short to be a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise CheckpointUnreadableError(f"{path} declares a {length}-byte header; not safetensors")
        try:
            header = json.loads(file.read(length))
        except ValueError as exc:
            raise CheckpointUnreadableError(f"{path} has no valid safetensors header: {exc}") from exc
    return {
        name: (str(entry["dtype"]), tuple(int(n) for n in entry["shape"]))
        for name, entry in header.items()
        if name != "__metadata__"
    }


def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files of one component, without dtype variants where a plain one exists."""
    files = sorted(folder.glob("*.safetensors"))
    plain = [f for f in files if not any(marker in f.name for marker in VARIANT_MARKERS)]
    if plain:
        return plain
    variants = {next(m for m in VARIANT_MARKERS if m in f.name) for f in files}
    return [f for f in files if next(iter(sorted(variants))) in f.name]


def component_weights(folder: Path) -> ComponentWeights:
    """The weights of the component in `folder` (`unet/`, `text_encoder/`...), from its headers."""
    files = checkpoint_files(folder)
    if not files:
        raise CheckpointUnreadableError(f"{folder} holds no .safetensors file")
    linears: list[Linear] = []
    other = 0
    for path in files:
        for name, (_dtype, shape) in read_header(path).items():
            if _is_linear_weight(name, shape):
                linears.append(Linear(name.removesuffix(".weight"), shape[0], shape[1]))
            else:
                other += math.prod(shape)
    return ComponentWeights(tuple(linears), other, max(f.stat().st_size for f in files))


def _is_linear_weight(name: str, shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 and name.endswith(".weight") and not name.endswith(EMBEDDING_SUFFIXES)

"""What a cached session gives back by freeing its text encoders: host RSS after `open_session`, cache on
(the encoders freed) and off (kept), each in a child process of its own.

    python -m bench.text_encoders_freed

The base is SD-shaped with random weights: the small preset's UNet and VAE, and a text encoder of SD
2.x's OpenCLIP ViT-H shape (1024 wide, 23 layers; the project's small offline tokenizer, so its
embedding table is small), about 1.1 GB in float32, as the CPU trains. Eight pairs at 64 px, two held
out, one validation prompt.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import torch
from PIL import Image

from bench.full_sdxl import _text_config
from trainer.dataset_format import DatasetWriter, EncodedImage

OPENCLIP_H = (1024, 4096, 23, 16, "gelu")  # (hidden, intermediate, layers, heads, activation)
MIB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=4, metavar=("BASE", "DATA", "OUT", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        base, data, out, cache = args.child
        print(json.dumps(_measure(Path(base), Path(data), Path(out), cached=cache == "on")))
        return
    with tempfile.TemporaryDirectory() as work:
        base, data = _build_base(Path(work) / "base"), _build_pairs(Path(work) / "pairs")
        print("| cache | text encoder parameters held | RSS after open_session | peak RSS |")
        print("| --- | --- | --- | --- |")
        for cache in ("on", "off"):
            out = str(Path(work) / f"out-{cache}")
            command = [sys.executable, "-m", "bench.text_encoders_freed", "--child", str(base), str(data)]
            row = json.loads(subprocess.run([*command, out, cache], check=True, capture_output=True).stdout)
            print(f"| {cache} | {row['held']:.0f} MiB | {row['rss']:.0f} MiB | {row['peak']:.0f} MiB |")


def _measure(base: Path, data: Path, out: Path, *, cached: bool) -> dict[str, float]:
    """MiB of text encoder parameters the opened session holds, its RSS, and the process's peak RSS."""
    from trainer.session import open_session
    from trainer.spec import TrainSpec, ValidationSpec

    spec = TrainSpec(
        base_model=str(base),
        resolution=64,
        train_batch_size=2,
        mixed_precision="no",
        eval_fraction=0.25,
        cache_latents=cached,
        validation=ValidationSpec(prompts=["a red circle"], num_inference_steps=2),
    )
    session = open_session(spec, data, out)
    gc.collect()
    held = sum(p.numel() * p.element_size() for e in session.model.text_encoders for p in e.parameters())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"held": held / MIB, "rss": psutil.Process().memory_info().rss / MIB, "peak": peak / MIB}


def _build_base(out: Path) -> Path:
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    from trainer.synthetic import tiny

    torch.manual_seed(0)
    shape = tiny.PRESETS["small"]
    tokenizer = tiny._scratch_tokenizer()
    components = tiny._unet_components(shape, tokenizer, tiny._unet(shape, cross_dim=OPENCLIP_H[0]))
    components["text_encoder"] = CLIPTextModel(_text_config(OPENCLIP_H, tokenizer))
    StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    ).save_pretrained(out)
    return out


def _build_pairs(root: Path) -> Path:
    with DatasetWriter(root) as writer:
        for i in range(8):
            writer.add_pair(
                f"a shape number {i}",
                chosen=EncodedImage(_png((200, 60 + 10 * i, 30))),
                rejected=EncodedImage(_png((30, 60 + 10 * i, 200))),
            )
    return root


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (80, 64), color).save(buffer, "PNG")
    return buffer.getvalue()


if __name__ == "__main__":
    main()

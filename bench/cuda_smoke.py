"""CUDA smoke test of the trainer: does a bf16 MaPO job on a GPU learn, and does its adapter load?

    python -m bench.cuda_smoke OUT_DIR

Trains the shipped `shapes-sdxl` model on the "prefer red" preference pairs with bf16 mixed precision
(the CPU test suite covers float32 only), then loads the adapter into a diffusers pipeline on the GPU with
`load_lora_weights` and draws the colour-less captions. It prints held-out preference accuracy before and
after, the share of red drawings before and after, and the wall time; it exits non-zero when the job
learned nothing. Part of scripts/gpu_check.sh, which a session with a lent GPU runs; without a GPU it runs
the same job in float32 on the CPU (a check of the script itself).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from trainer.events import Evaluation, Event
from trainer.loop import train
from trainer.sampling import load_renderer
from trainer.spec import TrainSpec
from trainer.synthetic.base_models import shipped_base_models
from trainer.synthetic.shape_preferences import prefer_red_pairs, write_dataset
from trainer.synthetic.shape_samples import every_caption_drawing, judge


def main(out: Path) -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = shipped_base_models()["shapes-sdxl"]
    write_dataset(out / "red", prefer_red_pairs(num_pairs=48, seed=0), resolution=64)
    spec = TrainSpec(
        base_model=base,
        resolution=64,
        train_batch_size=4,
        max_train_steps=100,
        learning_rate=1e-3,
        checkpoint_every_n_steps=50,
        lora_rank=8,
        cache_latents=True,
        eval_fraction=0.25,
        mixed_precision="bf16" if device == "cuda" else "no",
    )
    events: list[Event] = []
    started = time.perf_counter()
    result = train(spec, out / "red", out / "run", on_event=events.append)
    train_s = time.perf_counter() - started
    before, after = (e.metrics["heldout_accuracy"] for e in events if isinstance(e, Evaluation))
    assert result.adapter_path is not None
    red_before, red_after = (
        _red_share(base, adapter, device) for adapter in (None, result.adapter_path.parent)
    )
    report = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "train_s": round(train_s, 1),
        "steps": result.final_step,
        "heldout_accuracy": [before, after],
        "red_share": [red_before, red_after],
    }
    print(json.dumps(report))
    return 0 if after > before and red_after > red_before else 1


def _red_share(base: str, adapter: Path | None, device: str) -> float:
    renderer = load_renderer(base, device=torch.device(device))
    if adapter is not None:
        renderer.pipeline.load_lora_weights(str(adapter))
    judged = judge(renderer, every_caption_drawing(), seed=0, resolution=64, with_colour=False)
    return sum(j.read.colour == "red" for j in judged) / len(judged)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))

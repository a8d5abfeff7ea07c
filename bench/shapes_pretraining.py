"""What pre-training buys: caption accuracy of images from random tiny models and the shipped ones.

    python -m bench.shapes_pretraining [--seeds 0 1] [--sheet docs/images/shapes-pretraining.png]

For each family, the random `tiny` pipeline (trainer/synthetic/tiny.py) and the pre-trained `shapes-*` one
(trainer/synthetic/base_models/) generate every full caption of the shapes domain (27) per seed, 20 steps,
guidance 4; the exact classifier reads kind, colour and background back. `--sheet` saves the SDXL
images of the first seed: the random model's on top, the pre-trained model's below, same captions.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from bench.shape_jobs import pipeline
from trainer.families import FAMILIES
from trainer.synthetic.base_models import SHIPPED, shipped_base_models
from trainer.synthetic.shape_samples import caption_accuracy, contact_sheet, every_caption_drawing, judge
from trainer.synthetic.tiny import build_tiny_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--sheet", type=Path, default=None)
    parser.add_argument(
        "--families", nargs="+", default=sorted(set(SHIPPED.values())), choices=sorted(FAMILIES)
    )
    parser.add_argument(
        "--sheet-family", default="sdxl", choices=sorted(FAMILIES), help="whose images to sheet"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # the CPU is shared; one thread wastes no time waiting for another
    shipped = shipped_base_models()
    print("| family | model | kind | colour | background | all three |")
    print("|---|---|---|---|---|---|")
    sheet = []
    with tempfile.TemporaryDirectory() as scratch:
        for family in sorted(args.families):
            models = {
                f"tiny-{family} (random)": build_tiny_pipeline(family, Path(scratch) / family),
                f"shapes-{family}": Path(shipped[f"shapes-{family}"]),
            }
            for name, path in models.items():
                judged = [
                    item
                    for seed in args.seeds
                    for item in judge(pipeline(path), every_caption_drawing(), seed=seed, resolution=64)
                ]
                a = caption_accuracy(judged)
                cells = " | ".join(f"{a[k]:.3f}" for k in ("kind", "colour", "background", "all"))
                print(f"| {family} | {name} | {cells} |")
                if family == args.sheet_family:
                    sheet += [item.image for item in judged[:27]]
    if args.sheet:
        contact_sheet(sheet, columns=9).save(args.sheet)


if __name__ == "__main__":
    main()

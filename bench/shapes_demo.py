"""The "prefer red" demo job on a pre-trained shapes model against the same job on a random tiny model.

    python -m bench.shapes_demo [--base PATH] [--steps 150] [--seeds 0 1 2] [--sheet docs/images/x.png]
    python -m bench.shapes_demo --family flux --methods mapo dpo sft --no-random
    python -m bench.shapes_demo --family flux --margin-scale 1000 --no-random   # a default's sweep point

The dataset: 48 pairs whose prompts leave the colour open ("a circle on a white background"), the chosen
image red, the rejected one green or blue (trainer/synthetic/shape_preferences.py); 12 pairs are held out.
Each
base model gets the same MaPO job (LoRA rank 8, lr 1e-3, batch 4). Printed per base model and seed:
held-out accuracy at step 0 and at the end, and the share of red shapes among 27 images generated for
colour-less prompts before and after (the classifier of trainer/synthetic/shapes.py reads them). `--sheet`
saves
the pre-trained model's images before (top rows) and after (bottom rows) the first seed's job.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from bench.shape_jobs import JobSettings, judge_base, pretrained_base, run_job
from trainer.families import FAMILIES
from trainer.spec import Method
from trainer.synthetic.shape_preferences import PREFERRED_COLOUR, prefer_red_pairs, write_dataset
from trainer.synthetic.shape_samples import Judged, contact_sheet, every_caption_drawing
from trainer.synthetic.tiny import build_tiny_pipeline

DRAWINGS = every_caption_drawing()  # colour-less prompts: each (kind, background) three times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=None, help="pre-trained model (default: pre-train one)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sheet", type=Path, default=None, help="save before/after images here (PNG)")
    parser.add_argument("--family", default="sdxl", choices=sorted(FAMILIES))
    parser.add_argument("--methods", nargs="+", default=["mapo"], choices=["mapo", "dpo", "sft"])
    parser.add_argument("--margin-scale", type=float, default=None, help="MaPO's T (default: the family's)")
    parser.add_argument("--beta-dpo", type=float, default=None, help="DPO's beta (default: the family's)")
    parser.add_argument("--no-random", action="store_true", help="skip the random tiny model's rows")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the CPU is shared; one thread wastes no time waiting for another
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "prefer-red"
        write_dataset(data, prefer_red_pairs(num_pairs=48, seed=0), resolution=64)
        bases = {} if args.no_random else {"random": build_tiny_pipeline(args.family, Path(scratch) / "r")}
        bases["pre-trained"] = args.base or pretrained_base(args.family)
        header = f"{'base, method':18} {'seed':>4} {'acc@0':>6} {'acc@end':>8}"
        print(f"{header} {'red before':>11} {'red after':>10}")
        for name, base in bases.items():
            for method in args.methods:
                _compare(f"{name} {method}", base, data, args, method)


def _compare(name: str, base: Path, data: Path, args: argparse.Namespace, method: Method) -> None:
    rows = []
    settings = JobSettings(steps=args.steps, margin_scale=args.margin_scale, beta_dpo=args.beta_dpo)
    for seed in args.seeds:
        before = judge_base(base, DRAWINGS, seed=seed, with_colour=False)
        job = run_job(
            base,
            data,
            method=method,
            seed=seed,
            settings=settings,
            drawings=DRAWINGS,
            with_colour=False,
        )
        first, last = job.evaluations[0], job.evaluations[max(job.evaluations)]
        row = (first["heldout_accuracy"], last["heldout_accuracy"], _red(before), _red(job.judged))
        rows.append(row)
        print(f"{name:18} {seed:4} {row[0]:6.3f} {row[1]:8.3f} {row[2]:11.3f} {row[3]:10.3f}", flush=True)
        if args.sheet and name.startswith("pre-trained") and seed == args.seeds[0]:
            images = [j.image for j in before] + [j.image for j in job.judged]
            contact_sheet(images, columns=9).save(args.sheet)
    means = [statistics.fmean(column) for column in zip(*rows, strict=True)]
    spreads = [statistics.pstdev(column) for column in zip(*rows, strict=True)]
    cells = " ".join(f"{m:.3f}±{s:.3f}" for m, s in zip(means, spreads, strict=True))
    print(f"{name:18} mean±sd {cells}", flush=True)


def _red(judged: list[Judged]) -> float:
    return sum(j.read.colour == PREFERRED_COLOUR for j in judged) / len(judged)


if __name__ == "__main__":
    main()

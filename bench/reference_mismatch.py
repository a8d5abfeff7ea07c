"""Reference mismatch: does MaPO's advantage over Diffusion-DPO grow with the distance to the target?

    python -m bench.reference_mismatch [--base PATH] [--shifts 15 30 60] [--seeds 0 1 2] [--steps 150]
        [--plot docs/images/reference_mismatch.png] [--json results.json] [--sheets DIR]

The reference is a tiny SDXL pre-trained by the script on the shapes domain
(trainer/synthetic/pretrain.py; cached,
or `--base`): it draws "a red circle on a black background" as captioned. Each target moves the shape's
hue by `shift` degrees (15 small, 30 medium, 60 large: 60 is as far from the red/green/blue palette as a
hue gets). Per target, 48 pairs: full caption, chosen = the shifted drawing, rejected = the drawing as
captioned (trainer/synthetic/shape_preferences.py); 12 held out. Per target, method and seed: the same LoRA
job
(rank 8, lr 1e-3, batch 4, `--steps`), then
- held-out accuracy: share of held-out (pair, timestep) where the chosen image is denoised better;
- in target: share of 27 images (every full caption) whose shape hue the exact classifier finds nearer
  the shifted hue than the captioned one; off caption: share whose shape is no longer the captioned
  named colour (or has none); hue moved: their mean hue change, in degrees.
The reference's own held-out error gap (m_l - m_w at step 0; negative: it fits the rejected images better)
measures the mismatch. Prints every run, then mean ± sd over seeds per (shift, method).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.shape_jobs import RESOLUTION, JobSettings, judge_base, pretrained_base, run_job
from trainer.spec import Method
from trainer.synthetic.shape_preferences import hue_shift_pairs, moved_towards, signed_hue_move, write_dataset
from trainer.synthetic.shape_samples import Judged, contact_sheet, every_caption_drawing
from trainer.synthetic.shapes import render

METHODS: tuple[Method, ...] = ("mapo", "dpo", "sft")
FIGURES = ("reference_gap", "accuracy_before", "accuracy", "in_target", "off_caption", "hue_moved")
DRAWINGS = every_caption_drawing()


def main() -> None:
    args = _parse()
    torch.set_num_threads(1)  # the CPU is shared; one thread wastes no time waiting for another
    base = args.base or pretrained_base("sdxl")
    rows: list[dict[str, Any]] = []
    print(
        f"{'shift':>5} {'method':6} {'seed':>4} {'ref gap':>8} {'acc':>6} "
        f"{'in target':>9} {'off cap':>7} {'hue':>6}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        for shift in args.shifts:
            data = Path(scratch) / f"shift-{shift:g}"
            write_dataset(data, hue_shift_pairs(num_pairs=48, seed=0, shift=shift), resolution=64)
            for seed in args.seeds:
                reference = judge_base(base, DRAWINGS, seed=seed, with_colour=True)
                rows.append(_base_row(reference, shift=shift, seed=seed))
                for method in METHODS:
                    row, judged = _run(base, data, shift=shift, method=method, seed=seed, steps=args.steps)
                    rows.append(row)
                    if args.sheets and seed == args.seeds[0]:
                        _save_sheet(args.sheets / f"shift-{shift:g}-{method}.png", reference, judged, shift)
    _print_summary(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    if args.plot:
        _plot(rows, args.plot)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--base", type=Path, default=None, help="pre-trained shapes model (default: make one)"
    )
    parser.add_argument("--shifts", type=float, nargs="+", default=[15.0, 30.0, 60.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument(
        "--plot", type=Path, default=None, help="save the figure here (needs the bench extra)"
    )
    parser.add_argument("--json", type=Path, default=None, help="save every run's figures here")
    parser.add_argument(
        "--sheets", type=Path, default=None, help="folder for reference / target / job images (first seed)"
    )
    return parser.parse_args()


def _run(
    base: Path, data: Path, *, shift: float, method: Method, seed: int, steps: int
) -> tuple[dict[str, Any], list[Judged]]:
    job = run_job(
        base,
        data,
        method=method,
        seed=seed,
        settings=JobSettings(steps=steps),
        drawings=DRAWINGS,
        with_colour=True,
    )
    first, last = job.evaluations[0], job.evaluations[max(job.evaluations)]
    row = {
        "shift": shift,
        "method": method,
        "seed": seed,
        "reference_gap": first["heldout_error_gap"],
        "accuracy_before": first["heldout_accuracy"],
        "accuracy": last["heldout_accuracy"],
        **_sample_figures(job.judged, shift),
    }
    print(
        f"{shift:5g} {method:6} {seed:4} {row['reference_gap']:8.4f} {row['accuracy']:6.3f} "
        + _sample_cells(row),
        flush=True,
    )
    return row, job.judged


def _base_row(judged: list[Judged], *, shift: float, seed: int) -> dict[str, Any]:
    """The reference itself: where its own samples fall, as the baseline of the sample columns."""
    row = {"shift": shift, "method": "base", "seed": seed, **_sample_figures(judged, shift)}
    print(f"{shift:5g} {'base':6} {seed:4} {'':8} {'':6} {_sample_cells(row)}", flush=True)
    return row


def _save_sheet(path: Path, reference: list[Judged], judged: list[Judged], shift: float) -> None:
    """Rows of 9: the reference's samples, the targets (rendered), the job's samples; same captions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    targets = [render(replace(j.asked, hue=j.asked.hue + shift), RESOLUTION) for j in reference]
    images = [j.image for j in reference] + targets + [j.image for j in judged]
    contact_sheet(images, columns=9).save(path)


def _sample_figures(judged: list[Judged], shift: float) -> dict[str, float]:
    return {
        "in_target": _in_target(judged, shift),
        "off_caption": _off_caption(judged),
        "hue_moved": _hue_moved(judged),
    }


def _sample_cells(row: dict[str, Any]) -> str:
    return f"{row['in_target']:9.3f} {row['off_caption']:7.3f} {row['hue_moved']:6.1f}"


def _off_caption(judged: list[Judged]) -> float:
    """Share of samples whose shape is no longer the captioned named colour (a hue moved by 60° or more,
    or no colour at all): where a job went past the target, or elsewhere."""
    return sum(j.read.colour != j.asked.colour for j in judged) / len(judged)


def _in_target(judged: list[Judged], shift: float) -> float:
    return sum(moved_towards(j.read, j.asked, shift) for j in judged) / len(judged)


def _hue_moved(judged: list[Judged]) -> float:
    """Mean hue change of the samples that have a coloured shape (0 when none has)."""
    moves = [m for j in judged if (m := signed_hue_move(j.read, j.asked)) is not None]
    return statistics.fmean(moves) if moves else 0.0


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and population sd over seeds of each figure, per (shift, method), in the order run."""
    groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["shift"], row["method"]), []).append(row)
    summary = []
    for (shift, method), members in groups.items():
        entry: dict[str, Any] = {"shift": shift, "method": method, "seeds": len(members)}
        for name in FIGURES:
            if name in members[0]:  # the base rows have only the sample figures
                values = [m[name] for m in members]
                entry[name] = (statistics.fmean(values), statistics.pstdev(values))
        summary.append(entry)
    return summary


def _print_summary(rows: list[dict[str, Any]]) -> None:
    columns = (
        "shift | method | seeds | ref gap | acc @0 | held-out acc | in target | off caption | hue moved (°)"
    )
    print(f"\n| {columns} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for e in summarise(rows):
        gap = f"{e['reference_gap'][0]:.4f}" if "reference_gap" in e else ""
        before = f"{e['accuracy_before'][0]:.3f}" if "accuracy_before" in e else ""
        print(
            f"| {e['shift']:g}° | {e['method']} | {e['seeds']} | {gap} | {before} | {_pm(e, 'accuracy', 3)} "
            f"| {_pm(e, 'in_target', 3)} | {_pm(e, 'off_caption', 3)} | {_pm(e, 'hue_moved', 1)} |"
        )


def _pm(entry: dict[str, Any], name: str, digits: int) -> str:
    if name not in entry:
        return ""
    mean, sd = entry[name]
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib  # the optional `bench` extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(rows)
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (
        ("accuracy", "held-out preference accuracy"),
        ("in_target", "samples nearer the target hue"),
        ("off_caption", "samples off the captioned colour"),
    )
    for axis, (name, title) in zip(axes, panels, strict=True):
        for method in ("base", *METHODS):
            points = [e for e in summary if e["method"] == method and name in e]
            if not points:
                continue
            axis.errorbar(
                [e["shift"] for e in points],
                [e[name][0] for e in points],
                yerr=[e[name][1] for e in points],
                marker="o",
                capsize=3,
                label="reference (no job)" if method == "base" else method,
                linestyle="--" if method == "base" else "-",
                color="gray" if method == "base" else None,
            )
        axis.set_xlabel("target hue shift (°) = reference mismatch")
        axis.set_title(title)
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
    axes[1].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

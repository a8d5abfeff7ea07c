"""Our trainer against the two public reference scripts, side by side in one run.

    git clone https://github.com/mapo-t2i/mapo /src/mapo
    git clone https://github.com/huggingface/diffusers /src/diffusers
    python -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch==2.13.0 torchvision==0.28.0 \
        diffusers==0.42.1 transformers==5.24.0 peft==0.21.2 accelerate==1.16.0 pydantic pydantic-settings \
        pyyaml pyarrow datasets wandb tensorboard
    python -m bench.reference_side_by_side --python /tmp/refenv/bin/python \
        --mapo-repo /src/mapo --diffusers-repo /src/diffusers [--resolutions 128 64] [--rounds 3]

The scripts need torchvision, which exists only as a CUDA build for torch 2.13 (the CPU torch of
`make setup` cannot load it), so every configuration, ours included, runs under `--python`: an
interpreter with the reference scripts' requirements and our trainer's (this checkout is put on its
PYTHONPATH). Same torch, same libraries, same process set-up for both sides.

The scripts run unedited from the checkouts the user points at (nothing of theirs is copied into this
project): mapo-t2i/mapo's `train_with_lora.py` and diffusers'
`examples/research_projects/diffusion_dpo/train_diffusion_dpo_sdxl.py`. Everything runs on the same
small SDXL-shaped model (`trainer/synthetic/tiny.py`'s `small` preset, saved with save_pretrained), the
same 64 demo pairs (Pick-a-Pic parquet for the scripts, our layout for us: the same pictures), fp32,
LoRA rank 4, 2 pairs per step, random flips, no validation or checkpoints. Our runs are too short for
`compile_denoiser: "auto"` to compile; the "compiled" rows force it, as "auto" does for a long job.
Every configuration is a fresh process whose optimizer steps are timed by one global hook
(`bench/step_timer.py`), the rounds interleave the configurations so drift on a shared machine hits all
alike, and the table gives each one's median step (median over rounds of each round's median) and peak
RSS, then the ratios.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAPO_SCRIPT = "train_with_lora.py"
DPO_SCRIPT = "examples/research_projects/diffusion_dpo/train_diffusion_dpo_sdxl.py"
REFERENCE_MODULES = ("datasets", "torchvision", "wandb", "tensorboard")
LEARNING_RATE = 1e-4


@dataclass(frozen=True)
class Runner:
    """One configuration of the table: who trains, with what method, cached or not."""

    label: str
    kind: str  # "reference-mapo", "reference-dpo", "ours" or "floor"
    method: str = "mapo"
    cache: bool = True
    compile: bool | str = "auto"  # our spec's compile_denoiser; "auto" leaves a run this short eager


RUNNERS = (
    Runner("reference MaPO", "reference-mapo"),
    Runner("ours MaPO", "ours", "mapo", cache=True),
    Runner("ours MaPO uncached", "ours", "mapo", cache=False),
    # What "auto" picks for a job long enough to earn compiling back (the compile itself is not timed).
    Runner("ours MaPO compiled", "ours", "mapo", compile=True),
    Runner("reference DPO", "reference-dpo", "dpo"),
    Runner("ours DPO", "ours", "dpo", cache=True),
    Runner("ours DPO compiled", "ours", "dpo", compile=True),
    Runner("ours DPO uncached", "ours", "dpo", cache=False),
    Runner("floor", "floor"),
)
RATIOS = (
    ("ours MaPO", "reference MaPO"),
    ("ours DPO", "reference DPO"),
    ("ours MaPO uncached", "reference MaPO"),
    ("ours DPO uncached", "reference DPO"),
    ("ours MaPO compiled", "reference MaPO"),
    ("ours DPO compiled", "reference DPO"),
    ("ours MaPO", "ours DPO"),
    ("ours MaPO compiled", "ours DPO compiled"),
    ("ours MaPO", "floor"),
)


def main() -> None:
    args = _parse()
    _check_reference_environment(args)
    work = Path(args.work or tempfile.mkdtemp(prefix="mapo-side-by-side-"))
    model = _model(work)
    times: dict[tuple[int, str], list[float]] = {}
    peaks: dict[tuple[int, str], float] = {}
    for round_index in range(args.rounds):
        for resolution in args.resolutions:
            data = _datasets(work, resolution, args.pairs)
            for runner in RUNNERS:
                result = _run(runner, model, data, resolution, args, work / f"r{round_index}-{resolution}")
                median_ms = 1000 * statistics.median(result["steps"][args.warmup :])
                key = (resolution, runner.label)
                times.setdefault(key, []).append(median_ms)
                peaks[key] = max(peaks.get(key, 0.0), result["peak_rss_mb"])
                print(
                    f"  round {round_index} {resolution:4} px {runner.label:20} {median_ms:8.1f} ms",
                    file=sys.stderr,
                )
    _print_tables(args.resolutions, times, peaks)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mapo-repo", type=Path, required=True, help="a checkout of mapo-t2i/mapo")
    parser.add_argument(
        "--diffusers-repo", type=Path, required=True, help="a checkout of huggingface/diffusers"
    )
    parser.add_argument("--resolutions", nargs="+", type=int, default=[128, 64])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every configuration")
    parser.add_argument("--steps", type=int, default=10, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="steps dropped before measuring")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--python", default=sys.executable, help="interpreter for every configuration")
    parser.add_argument("--work", help="folder for the model, data and runs (default: a new temp folder)")
    return parser.parse_args()


def _check_reference_environment(args: argparse.Namespace) -> None:
    for script in (args.mapo_repo / MAPO_SCRIPT, args.diffusers_repo / DPO_SCRIPT):
        if not script.is_file():
            sys.exit(f"{script} not found: point --mapo-repo/--diffusers-repo at the checkouts")
    probe = "import importlib.util as u, sys; print(*(m for m in sys.argv[1:] if not u.find_spec(m)))"
    missing = subprocess.run([args.python, "-c", probe, *REFERENCE_MODULES], capture_output=True, text=True)
    if missing.returncode != 0 or missing.stdout.strip():
        lacking = missing.stdout.strip() or missing.stderr
        sys.exit(f"{args.python} lacks what the reference scripts import: {lacking}")


def _model(work: Path) -> Path:
    path = work / "small-sdxl"
    if not (path / "model_index.json").is_file():
        command = [
            "-m",
            "trainer",
            "make-tiny-model",
            "--family",
            "sdxl",
            "--preset",
            "small",
            "--out",
            str(path),
        ]
        subprocess.run([sys.executable, *command], check=True, capture_output=True)
    return path


def _datasets(work: Path, resolution: int, pairs: int) -> dict[str, Path]:
    """The same demo pairs twice: our canonical layout, and a Pick-a-Pic parquet folder for the scripts
    (`datasets.load_dataset(folder)` reads its `train` split)."""
    from trainer.synthetic.demo_data import make_demo_dataset, write_demo_upload

    ours, theirs = work / f"ours-{resolution}", work / f"pickapic-{resolution}"
    if not (ours / "manifest.json").is_file():
        make_demo_dataset(ours, num_pairs=pairs, resolution=resolution)
    parquet = theirs / "data" / "train-00000-of-00001.parquet"
    if not parquet.is_file():
        parquet.parent.mkdir(parents=True, exist_ok=True)
        write_demo_upload(parquet, kind="parquet", num_pairs=pairs, resolution=resolution)
    return {"ours": ours, "theirs": theirs}


def _run(
    runner: Runner,
    model: Path,
    data: dict[str, Path],
    resolution: int,
    args: argparse.Namespace,
    run_dir: Path,
) -> dict[str, Any]:
    out = run_dir / runner.label.replace(" ", "-")
    # A fresh folder each time: our trainer resumes from what a killed earlier run with the same --work
    # left there, and would then time no steps at all.
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    steps = args.steps + args.warmup
    if runner.kind == "floor":
        return _floor(model, resolution, args)
    if runner.kind == "ours":
        program = [
            "-m",
            "trainer",
            "train",
            *_our_arguments(runner, model, data["ours"], resolution, steps, out),
        ]
    else:
        program = _reference_arguments(runner, model, data["theirs"], resolution, steps, out, args)
    timer_out = out / "steps.json"
    command = [args.python, "-m", "bench.step_timer", "--out", str(timer_out), *program]
    # The scripts run from their own folder, as their READMEs say (mapo's reads validation_prompts.json).
    cwd = out if runner.kind == "ours" else Path(program[0]).parent
    done = subprocess.run(command, capture_output=True, text=True, env=_offline_env(out), cwd=cwd)
    if done.returncode != 0 or not timer_out.is_file():
        sys.exit(f"{runner.label} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(timer_out.read_text())
    ends = result["step_ends"]
    if len(ends) != steps:
        sys.exit(f"{runner.label}: {len(ends)} optimizer steps recorded, {steps} expected")
    result["steps"] = [later - earlier for earlier, later in itertools.pairwise(ends)]
    return result


def _our_arguments(
    runner: Runner, model: Path, data: Path, resolution: int, steps: int, out: Path
) -> list[str]:
    spec = {
        "base_model": str(model),
        "method": runner.method,
        "resolution": resolution,
        "train_batch_size": 2,
        # The scripts' default is 1; ours is the recipe's 2, which would time two micro-steps per step.
        "gradient_accumulation_steps": 1,
        "max_train_steps": steps,
        "learning_rate": LEARNING_RATE,
        "lora_rank": 4,
        "mixed_precision": "no",
        "checkpoint_every_n_steps": 100_000,
        "cache_latents": None if runner.cache else False,  # None: the default, which caches
        "compile_denoiser": runner.compile,
        "hflip": True,
        "seed": 0,
    }
    (out / "spec.json").write_text(json.dumps(spec))
    return ["--spec", str(out / "spec.json"), "--dataset", str(data), "--output", str(out / "run")]


def _reference_arguments(
    runner: Runner, model: Path, data: Path, resolution: int, steps: int, out: Path, args: argparse.Namespace
) -> list[str]:
    mapo = runner.kind == "reference-mapo"
    script = args.mapo_repo / MAPO_SCRIPT if mapo else args.diffusers_repo / DPO_SCRIPT
    return [
        str(script),
        f"--pretrained_model_name_or_path={model}",
        f"--dataset_name={data}",
        "--dataset_split_name=train",
        f"--output_dir={out / 'run'}",
        f"--resolution={resolution}",
        "--train_batch_size=2",
        f"--max_train_steps={steps}",
        f"--learning_rate={LEARNING_RATE}",
        "--lr_warmup_steps=0",
        "--mixed_precision=no",
        "--checkpointing_steps=100000",
        "--seed=0",
        "--dataloader_num_workers=0",
        "--report_to=tensorboard",
        "--lora_rank=4" if mapo else "--rank=4",
    ]


def _offline_env(out: Path) -> dict[str, str]:
    return os.environ | {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(out / "hf"),
        "WANDB_MODE": "disabled",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }


def _floor(model: Path, resolution: int, args: argparse.Namespace) -> dict[str, Any]:
    """bench.trainer_step's bare forward + backward of the LoRA UNet on the same latents."""
    config = {"kind": "floor", "model": str(model), "resolution": resolution, "steps": args.steps}
    config |= {"warmup": args.warmup, "preset": "small", "family": "sdxl"}
    done = subprocess.run(
        [args.python, "-m", "bench.trainer_step", "--one", json.dumps(config)],
        capture_output=True,
        text=True,
        env=_offline_env(Path(tempfile.gettempdir())),
    )
    if done.returncode != 0:
        sys.exit(f"floor failed:\n{done.stderr[-4000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    # trainer_step reports the median already; give it the shape of a timed run.
    return {"steps": [row["step_ms"] / 1000] * (args.steps + args.warmup), "peak_rss_mb": row["peak_rss_mb"]}


def _print_tables(
    resolutions: list[int], times: dict[tuple[int, str], list[float]], peaks: dict[tuple[int, str], float]
) -> None:
    step = {key: statistics.median(values) for key, values in times.items()}
    print(f"\n{'configuration':22}" + "".join(f" {f'{r} px ms':>10} {'RSS MB':>7}" for r in resolutions))
    for runner in RUNNERS:
        cells = "".join(
            f" {step[(r, runner.label)]:10.1f} {peaks[(r, runner.label)]:7.0f}" for r in resolutions
        )
        print(f"{runner.label:22}{cells}")
    print(f"\n{'ratio':40}" + "".join(f" {f'{r} px':>8}" for r in resolutions))
    for ours, theirs in RATIOS:
        cells = "".join(f" {step[(r, ours)] / step[(r, theirs)]:8.2f}" for r in resolutions)
        print(f"{ours + ' / ' + theirs:40}{cells}")


if __name__ == "__main__":
    main()

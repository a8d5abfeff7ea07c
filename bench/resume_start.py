"""What a resumed job pays before its first step: with the latent cache it stored, and without one.

    python -m bench.resume_start                                   # small SD and FLUX, 64 pairs at 128 px
    python -m bench.resume_start --families sdxl --pairs 256 --rounds 3

A job of each family is trained for one step (cached latents, hflip, a tenth of the pairs held out) and
stopped, which leaves a checkpoint and the stored cache in its output folder. Each round then resumes a
fresh copy of that folder twice, in child processes of their own: once as it is ("stored"), once with
its cache folder deleted ("encoded"), which is what every resume did before the cache was stored: encode
the training and held-out pairs again. The table gives the median seconds from the `train()` call to the
resumed job's first step event, and the stored cache's size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.trainer_step import _dataset, _model

SETTINGS = ("stored", "encoded")


def main() -> None:
    args = _parse()
    rows = []
    for family in args.families:
        model, data = _model(family, args.preset), _dataset(args.resolution, args.pairs)
        with tempfile.TemporaryDirectory() as work:
            template = Path(work) / "stopped"
            config = {"model": str(model), "data": str(data), "resolution": args.resolution}
            _in_child({**config, "out": str(template)})
            seconds: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
            for round_index in range(args.rounds):
                for setting in SETTINGS:
                    out = Path(work) / f"{setting}-{round_index}"
                    shutil.copytree(template, out)
                    if setting == "encoded":
                        shutil.rmtree(out / "cache")
                    seconds[setting].append(_in_child({**config, "out": str(out)})["seconds"])
                    shutil.rmtree(out)
            megabytes = sum(p.stat().st_size for p in (template / "cache").iterdir()) / 2**20
        for setting in SETTINGS:
            rows.append((family, setting, statistics.median(seconds[setting]), megabytes))
            print(f"  {family} {setting}: {seconds[setting]}", file=sys.stderr)
    print(f"\n{'model':12} {'px':>4} {'pairs':>5} {'resume':8} {'s to 1st step':>13} {'cache MB':>9}")
    for family, setting, median, megabytes in rows:
        line = (
            f"{family + '-' + args.preset:12} {args.resolution:4} {args.pairs:5} {setting:8} {median:13.2f}"
        )
        print(line + f" {megabytes:9.1f}")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["sd", "flux"])
    parser.add_argument("--preset", default="small", choices=["tiny", "small"])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    return parser.parse_args()


def _in_child(config: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.resume_start", "--one", json.dumps(config)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"FAILED {config}:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _run_one(config: dict[str, Any]) -> dict[str, float]:
    """Train the job in `config["out"]` (resuming what is there) and stop it after the first step event
    of this run, which leaves it resumable; returns the seconds from the call to that event."""
    from trainer.events import Event, Step
    from trainer.loop import train
    from trainer.spec import TrainSpec

    spec = TrainSpec(
        base_model=config["model"],
        method="mapo",
        resolution=config["resolution"],
        train_batch_size=2,
        max_train_steps=10,
        lora_rank=4,
        mixed_precision="bf16",
        checkpoint_every_n_steps=1,
        cache_latents=True,
        hflip=True,
        eval_fraction=0.1,
    )
    first_step: list[float] = []

    def on_event(event: Event) -> None:
        if isinstance(event, Step) and not first_step:
            first_step.append(time.perf_counter())

    started = time.perf_counter()
    train(
        spec,
        Path(config["data"]),
        Path(config["out"]),
        on_event=on_event,
        should_stop=lambda: bool(first_step),
    )
    return {"seconds": first_step[0] - started}


if __name__ == "__main__":
    if "--one" in sys.argv:
        print(json.dumps(_run_one(json.loads(_parse().one))))
    else:
        main()

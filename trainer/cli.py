"""`python -m trainer`: train from a spec file, build or pre-train the offline tiny models, write demo data.

`train` prints every event as one JSON line on stdout (for scripts) and, on a terminal, a progress bar on
stderr. SIGINT/SIGTERM stop it gracefully: the steps done so far are checkpointed, and running the same
command again resumes. Exit codes: 0 finished, 1 training error, 2 bad spec or arguments, 130 stopped.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import yaml
from pydantic import ValidationError

from trainer.families import FAMILIES
from trainer.spec import TrainSpec

if TYPE_CHECKING:
    from trainer.errors import TrainingError

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_STOPPED = 1, 2, 130


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler: Any = args.handler
    code: int = handler(args)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    train = commands.add_parser("train", help="train a LoRA from a spec file (YAML or JSON)")
    train.add_argument("--spec", type=Path, required=True, help="TrainSpec as YAML or JSON")
    train.add_argument("--dataset", type=Path, required=True, help="dataset dir in the canonical layout")
    train.add_argument("--output", type=Path, required=True, help="output dir (same dir = resume)")
    train.set_defaults(handler=_train)
    tiny = commands.add_parser("make-tiny-model", help="build an offline random-weight pipeline of a family")
    tiny.add_argument("--family", choices=sorted(FAMILIES), default="sdxl")
    tiny.add_argument("--preset", choices=["tiny", "small"], default="tiny")
    tiny.add_argument("--out", type=Path, required=True)
    tiny.set_defaults(handler=_make_tiny)
    _add_pretrain_parser(commands)
    demo = commands.add_parser("make-demo-dataset", help="write synthetic warm-vs-cool preference pairs")
    demo.add_argument("--out", type=Path, required=True)
    demo.add_argument("--pairs", type=int, default=48)
    demo.add_argument("--resolution", type=int, default=64)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=_make_demo)
    return parser


def _add_pretrain_parser(commands: Any) -> None:
    pretrain = commands.add_parser(
        "pretrain-tiny", help="pre-train a tiny pipeline of a family to draw captioned shapes (CPU minutes)"
    )
    pretrain.add_argument("--family", choices=sorted(FAMILIES), default="sdxl")
    pretrain.add_argument("--out", type=Path, required=True)
    pretrain.add_argument("--autoencoder-steps", type=int, default=None, help="VAE steps (default: preset)")
    pretrain.add_argument("--denoiser-steps", type=int, default=None, help="UNet steps (default: preset)")
    pretrain.add_argument(
        "--adapt-steps", type=int, default=None, help="steps at the pipeline's text length (default: preset)"
    )
    pretrain.add_argument(
        "--start-from", type=Path, default=None, help="a shapes base to run the last (adapt) stage on"
    )
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--half", action="store_true", help="store the weights in float16 (as shipped)")
    pretrain.set_defaults(handler=_pretrain)


def load_spec(path: Path) -> TrainSpec:
    """Read a spec file; YAML is a superset of JSON, so one parser serves both."""
    return TrainSpec.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


def _train(args: argparse.Namespace) -> int:
    try:
        spec = load_spec(args.spec)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        print(f"invalid spec {args.spec}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # torch loads here, after the spec is known to be good, so a typo is reported at once.
    from trainer.errors import TrainingError
    from trainer.loop import train
    from trainer.progress import EventPrinter

    stop_requested = _install_stop_handlers()
    with EventPrinter(sys.stdout, show_progress=sys.stderr.isatty()) as printer:
        try:
            result = train(spec, args.dataset, args.output, on_event=printer, should_stop=stop_requested)
        except TrainingError as exc:
            report_training_error(exc, sys.stdout)
            return EXIT_FAILED
    return EXIT_STOPPED if result.stopped else 0


def report_training_error(error: TrainingError, out: TextIO) -> None:
    """`error` as one JSON line on `out`, and for a launcher that started this process as one rank of
    several, in this rank's error file too (see trainer.launch)."""
    from trainer.launch import record_rank_error

    try:
        record_rank_error(error)
    except OSError as exc:  # a full disk, say: the stdout line below still tells the launcher
        print(f"could not record the error for the launcher: {exc}", file=sys.stderr)
    # One write of the whole line: the ranks share one stdout pipe, and torchrun runs them under
    # `python -u`, where print() writes the text and its newline apart; two ranks failing at once
    # interleaved their lines into one that no reader could parse.
    out.write(json.dumps({"type": "error", "code": error.code, "message": error.message}) + "\n")
    out.flush()


def _install_stop_handlers() -> Any:
    requested: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        requested.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    return lambda: bool(requested)


def _make_tiny(args: argparse.Namespace) -> int:
    from trainer.synthetic.tiny import build_tiny_pipeline

    print(build_tiny_pipeline(args.family, args.out, preset=args.preset))
    return 0


def _make_demo(args: argparse.Namespace) -> int:
    from trainer.synthetic.demo_data import make_demo_dataset

    manifest = make_demo_dataset(args.out, num_pairs=args.pairs, resolution=args.resolution, seed=args.seed)
    print(f"{args.out}: {manifest.num_pairs} pairs")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from trainer.synthetic.pretrain import PretrainConfig, pretrain_tiny, progress_printer

    config = PretrainConfig(seed=args.seed)
    for name in ("autoencoder_steps", "denoiser_steps", "adapt_steps"):
        if getattr(args, name) is not None:
            config = replace(config, **{name: getattr(args, name)})
    report = pretrain_tiny(
        args.family,
        args.out,
        config,
        on_progress=progress_printer(sys.stderr, every=20),
        half=args.half,
        start_from=args.start_from,
    )
    print(json.dumps({"out": str(args.out), **report.summary()}))
    return 0

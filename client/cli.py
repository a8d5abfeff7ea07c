"""`mapo`: run the embedded service, and use any mapo-service from the command line.

The API is found at MAPO_API_URL (default http://127.0.0.1:8000) with the key MAPO_API_KEY; --url and
--key override them. `serve`, `migrate` and `keys` are the operator's commands (`mapo-ops`, package ops):
they work on the local service's settings (MAPO_*) instead, and only they import the server's code.
Exit codes: 0 done, 1 error (or a watched job failed), 2 bad arguments, 3 a watched job was cancelled.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeAlias

import httpx
from rich.console import Console

from client.jobspec import JobSpecError, build_job_body, read_spec_file
from client.sdk import MapoAPIError, MapoClient, MapoError

DEFAULT_API_URL = "http://127.0.0.1:8000"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 3
JOB_STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")
JOB_EXIT_CODES = {"succeeded": EXIT_OK, "failed": EXIT_ERROR, "cancelled": EXIT_CANCELLED}
Handler = Callable[[argparse.Namespace], int]
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
# Handed over to ops.cli (imported only then), so that the SDK and the REST commands need no server code.
OPERATOR_COMMANDS = {
    "serve": "run the embedded service (API + worker) in the foreground",
    "migrate": "upgrade the database schema to the newest version",
    "keys": "API keys: create, list, revoke",
}


class UsageError(Exception):
    """Arguments that parse but cannot be used (e.g. no API key anywhere)."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mapo` console script and of `python -m client`."""
    argv = sys.argv[1:] if argv is None else argv
    if _command_of(argv) in OPERATOR_COMMANDS:
        return _run_operator_command(argv)
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except (UsageError, JobSpecError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    except MapoAPIError as exc:
        for line in api_error_lines(exc):
            _error(line)
        return EXIT_ERROR
    except MapoError as exc:
        _error(str(exc))
        return EXIT_ERROR
    except httpx.TransportError as exc:
        _error(f"cannot reach {api_url(args)}: {exc} (is `mapo serve` running?)")
        return EXIT_ERROR


SHOWN_PROBLEMS = 20


def api_error_lines(exc: MapoAPIError) -> list[str]:
    """What the API refused, each thing once: the dataset's problems or the body's invalid fields one per
    line under a heading (the error's message repeats the first few in one line), else the error itself."""
    problems: list[dict[str, Any]] = exc.body.get("problems") or []
    if problems:
        heading = f"{exc.status} {exc.code}: {len(problems)} problem(s); fix them and upload again:"
        lines = [f"  {_problem_line(problem)}" for problem in problems[:SHOWN_PROBLEMS]]
        more = [f"  ... and {len(problems) - SHOWN_PROBLEMS} more"] if len(problems) > SHOWN_PROBLEMS else []
        return [heading, *lines, *more]
    details: list[dict[str, Any]] = exc.body.get("details") or []
    if len(details) > 1:
        heading = f"{exc.status} {exc.code}: {len(details)} invalid fields:"
        # pydantic starts the message of a check written in code with "Value error, ".
        return [heading, *(f"  {d['param']}: {d['message'].removeprefix('Value error, ')}" for d in details)]
    return [str(exc)]


def _problem_line(problem: dict[str, Any]) -> str:
    """`row 3, field chosen: reason`, as the API's message words a problem."""
    where = [f"row {problem['row']}"] if problem.get("row") is not None else []
    where += [f"field {problem['field']}"] if problem.get("field") is not None else []
    return f"{', '.join(where)}: {problem['reason']}" if where else str(problem["reason"])


def _command_of(argv: list[str]) -> str | None:
    """The command word of `argv`: its first word that is neither an option nor --url/--key's value."""
    words = iter(argv)
    for word in words:
        if word in ("--url", "--key"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _run_operator_command(argv: list[str]) -> int:
    """`mapo serve|migrate|keys ...` is `mapo-ops ...`; --url/--key mean nothing there and are dropped."""
    try:
        from ops.cli import main as operator_main
    except ModuleNotFoundError as exc:
        _error(f"`mapo {_command_of(argv)}` needs the server's packages, which are not installed ({exc})")
        return EXIT_ERROR
    return operator_main(_without_api_options(argv), prog="mapo")


def _without_api_options(argv: list[str]) -> list[str]:
    kept, words = [], iter(argv)
    for word in words:
        if word in ("--url", "--key"):
            next(words, None)
        elif not word.startswith(("--url=", "--key=")):
            kept.append(word)
    return kept


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    # --url/--key work before or after the command; SUPPRESS keeps a later default from hiding an earlier one.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help="API base URL (env MAPO_API_URL)")
    common.add_argument("--key", default=argparse.SUPPRESS, help="API key (env MAPO_API_KEY)")
    parser = argparse.ArgumentParser(prog="mapo", description=__doc__, parents=[common])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    _add_operator_commands(commands)
    _add_demo_command(commands)
    _add_dataset_commands(commands, common)
    _add_job_commands(commands, common)
    _add_output_commands(commands, common)
    workers = commands.add_parser("workers", parents=[common], help="the training workers and their GPUs")
    workers.add_argument("--status", choices=["online", "offline", "stopped"])
    workers.set_defaults(handler=cmd_workers)
    base_models = commands.add_parser(
        "base-models", parents=[common], help="the base models jobs can train on, with their families"
    )
    base_models.set_defaults(handler=cmd_base_models)
    return parser


def _add_operator_commands(commands: Subparsers) -> None:
    """Listed here for `mapo --help`; `main` hands them to ops.cli before this parser sees them."""
    for name, text in OPERATOR_COMMANDS.items():
        commands.add_parser(name, help=f"{text} (the operator's `mapo-ops {name}`)", add_help=False)


def _add_demo_command(commands: Subparsers) -> None:
    demo = commands.add_parser(
        "demo-data", help="write a synthetic demo dataset to upload (.zip/.tar/.parquet)"
    )
    demo.add_argument("file", type=Path, help="where to write it; the suffix picks the format")
    demo.add_argument("--pairs", type=int, default=48, help="number of preference pairs (default 48)")
    demo.add_argument("--resolution", type=int, default=64, help="image side in pixels (default 64)")
    demo.add_argument("--seed", type=int, default=0, help="random seed: the same seed, the same data")
    demo.add_argument(
        "--preset",
        choices=["prefer-red", "warm-cool"],
        default="prefer-red",
        help="prefer-red (default): colour-less prompts of the shapes the shipped shapes-* bases draw, red "
        "chosen over green/blue, so a short job visibly aligns them; warm-cool: abstract layouts that no "
        "shipped base knows",
    )
    demo.add_argument(
        "--format",
        choices=["manifest", "captions", "pair-folders", "parquet-shards"],
        default="manifest",
        help="archive layout: manifest (default): pairs.jsonl and images/; captions: the chosen images "
        "with same-name .txt captions, to upload with kind=targets; pair-folders: w/ and l/ with .txt "
        "captions beside them, to upload as pairs; parquet-shards: Pick-a-Pic parquet files "
        "data/train-0000K-of-0000N.parquet, as Hugging Face publishes datasets",
    )
    demo.add_argument(
        "--shards",
        type=int,
        default=None,
        help="number of parquet files of --format parquet-shards (default 4)",
    )
    demo.add_argument(
        "--masks",
        action="store_true",
        help="give every other pair a mask, white over its shapes (every format but captions)",
    )
    demo.set_defaults(handler=cmd_demo_data)


def _part_bytes(text: str) -> int:
    """A part size: a whole number of bytes from 1 KiB to 1 GiB."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of bytes: {text!r}") from None
    if not 1 << 10 <= value <= 1 << 30:
        raise argparse.ArgumentTypeError(f"{value} is not between 1024 (1 KiB) and 1073741824 (1 GiB)")
    return value


def _add_dataset_commands(commands: Subparsers, common: argparse.ArgumentParser) -> None:
    datasets = commands.add_parser("datasets", help="preference datasets")
    sub = datasets.add_subparsers(required=True, metavar="COMMAND")
    upload = sub.add_parser("upload", parents=[common], help="upload a .zip, .tar(.gz) or .parquet")
    upload.add_argument("file", type=Path, help="the dataset file")
    upload.add_argument("--name", help="display name (default: the file name)")
    upload.add_argument(
        "--kind",
        choices=["pairs", "targets", "avoid"],
        default="pairs",
        help="targets / avoid: rows of prompt, image, generation_prompt; the job's base model draws the "
        "rejected (targets) or chosen (avoid) side",
    )
    upload.add_argument(
        "--trigger-word",
        help="captioned images (kind targets): the word the adapter learns; put in each caption at "
        "[trigger], else in front, and left out of the prompt the base model draws the rejected side from",
    )
    upload.add_argument(
        "--part-bytes",
        type=_part_bytes,
        default=16 << 20,
        help="size of each resumable part in bytes (default 16 MiB); a dropped connection re-sends at "
        "most the part in flight",
    )
    upload.add_argument(
        "--one-request",
        action="store_true",
        help="send the file in one request instead of resumable parts (no resume after a dropped "
        "connection; for servers older than /v1/uploads)",
    )
    upload.set_defaults(handler=cmd_datasets_upload)
    listing = sub.add_parser("list", parents=[common], help="your datasets, newest first")
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(handler=cmd_datasets_list)
    get = sub.add_parser("get", parents=[common], help="a dataset as JSON (pairs, bytes, sha256, preview)")
    get.add_argument("dataset", help="dataset id")
    get.set_defaults(handler=cmd_datasets_get)
    delete = sub.add_parser("delete", parents=[common], help="delete a dataset (refused while a job uses it)")
    delete.add_argument("dataset", help="dataset id")
    delete.set_defaults(handler=cmd_datasets_delete)


def _add_job_commands(commands: Subparsers, common: argparse.ArgumentParser) -> None:
    sub = commands.add_parser("jobs", help="training jobs").add_subparsers(required=True, metavar="COMMAND")
    create = sub.add_parser("create", parents=[common], help="create a training job")
    create.add_argument("--dataset", help="dataset id (required unless the --spec file has dataset_id)")
    create.add_argument(
        "--base-model",
        help="an allowed base model, e.g. shapes-sdxl (see `mapo base-models`; required unless the --spec "
        "file has base_model)",
    )
    create.add_argument("--method", choices=["mapo", "dpo", "sft"], help="the objective (default mapo)")
    create.add_argument("--spec", type=Path, help="YAML/JSON: a job body or a flat TrainSpec")
    create.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="e.g. learning_rate=1e-4"
    )
    create.add_argument("--steps", type=int, help="max_train_steps")
    create.add_argument("--queue", help="training queue, e.g. one per GPU class (see `mapo workers`)")
    create.add_argument("--priority", type=int, help="0-9, higher starts first within its queue")
    create.add_argument("--idempotency-key", help="repeat the create safely")
    create.add_argument(
        "--estimate",
        action="store_true",
        help="create nothing: print the job's recipe, peak memory, and time, cost and the workers that "
        "could take it per device class",
    )
    create.set_defaults(handler=cmd_jobs_create)
    listing = sub.add_parser("list", parents=[common], help="your jobs, newest first")
    listing.add_argument("--status", choices=JOB_STATUSES)
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(handler=cmd_jobs_list)
    for name, handler, text in (
        ("get", cmd_jobs_get, "a job as JSON"),
        ("watch", cmd_jobs_watch, "follow a job with a live progress bar until it ends"),
        ("cancel", cmd_jobs_cancel, "request cancellation"),
        ("delete", cmd_jobs_delete, "delete a finished job with its events, metrics and outputs"),
    ):
        command = sub.add_parser(name, parents=[common], help=text)
        command.add_argument("job", help="job id")
        command.set_defaults(handler=handler)


def _add_output_commands(commands: Subparsers, common: argparse.ArgumentParser) -> None:
    adapter = commands.add_parser("adapter", parents=[common], help="download a job's LoRA (sha256-checked)")
    adapter.add_argument("job")
    adapter.add_argument("--format", choices=["diffusers", "kohya"], default="diffusers")
    # A str, not a Path: Path drops the trailing "/" that marks a directory still to be created.
    adapter.add_argument("-o", "--output", default=".", help="directory (existing or ending in /) or file")
    adapter.set_defaults(handler=cmd_adapter)
    samples = commands.add_parser("samples", parents=[common], help="save a job's validation images")
    samples.add_argument("job")
    samples.add_argument("-o", "--output", type=Path, help="directory (default ./JOB-samples)")
    samples.set_defaults(handler=cmd_samples)


# Configuration


def api_url(args: argparse.Namespace) -> str:
    """--url, else MAPO_API_URL, else the local default."""
    url: str = getattr(args, "url", None) or os.environ.get("MAPO_API_URL") or DEFAULT_API_URL
    return url


def client_from(args: argparse.Namespace) -> MapoClient:
    """An SDK client for --url/--key or the environment."""
    key = getattr(args, "key", None) or os.environ.get("MAPO_API_KEY")
    if not key:
        raise UsageError("no API key: set MAPO_API_KEY or pass --key (make one with `mapo keys create`)")
    return MapoClient(api_url(args), key)


def existing_file(path: Path) -> Path:
    """`path`, or a UsageError naming it when it is not a file (instead of a traceback from deep inside)."""
    if not path.is_file():
        raise UsageError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    return path


def _console() -> Console:
    return Console(highlight=False)


def _error(message: str) -> None:
    print(f"mapo: {message}", file=sys.stderr)


# Local commands


def cmd_demo_data(args: argparse.Namespace) -> int:
    """Write the synthetic warm-vs-cool demo dataset in the upload format its suffix names."""
    from trainer.synthetic.demo_data import write_demo_upload

    name = args.file.name.lower()
    kind: Literal["zip", "tar", "parquet"]
    if name.endswith(".zip"):
        kind = "zip"
    elif name.endswith((".tar", ".tar.gz", ".tgz")):
        kind = "tar"
    elif name.endswith(".parquet"):
        kind = "parquet"
    else:
        raise UsageError(f"{args.file}: use a .zip, .tar, .tar.gz, .tgz or .parquet name")
    if kind == "parquet" and args.format != "manifest":
        raise UsageError(
            f"--format {args.format} is an archive layout: use a .zip, .tar, .tar.gz or .tgz name"
        )
    shards = _demo_shards(args)
    if args.masks and args.format == "captions":
        raise UsageError("--masks: captioned images have no place for a mask; use another --format")
    args.file.parent.mkdir(parents=True, exist_ok=True)
    write_demo_upload(
        args.file,
        kind=kind,
        num_pairs=args.pairs,
        resolution=args.resolution,
        seed=args.seed,
        preset=args.preset,
        layout=args.format,
        shards=shards,
        masks=args.masks,
    )
    layout = "" if args.format == "manifest" else f", {args.format} layout"
    if args.format == "parquet-shards":
        layout = f", {shards} parquet shards"
    layout += ", a mask on every other pair" if args.masks else ""
    upload_as = " (upload with kind=targets)" if args.format == "captions" else ""
    print(f"{args.file}: {args.pairs} {args.preset} demo pairs at {args.resolution}px{layout}{upload_as}")
    return EXIT_OK


def _demo_shards(args: argparse.Namespace) -> int:
    """The number of parquet shards to write; --shards with another format would be silently ignored."""
    from trainer.synthetic.demo_data import DEMO_SHARDS

    if args.shards is None:
        return DEMO_SHARDS
    if args.format != "parquet-shards":
        raise UsageError(f"--shards applies to --format parquet-shards, not --format {args.format}")
    if args.shards < 1:
        raise UsageError(f"--shards must be at least 1, not {args.shards}")
    return int(args.shards)


# API commands


def cmd_datasets_upload(args: argparse.Namespace) -> int:
    """Upload a dataset in resumable parts (run it again to resume one cut off); prints its id first."""
    path = existing_file(args.file)
    fields: dict[str, Any] = {"name": args.name, "kind": args.kind, "trigger_word": args.trigger_word}
    with client_from(args) as mapo:
        if args.one_request:
            dataset = mapo.upload_dataset(path, **fields)
        else:
            from client.output import upload_progress

            with upload_progress(path.name) as on_progress:
                dataset = mapo.upload_dataset_resumable(
                    path, part_bytes=args.part_bytes, on_progress=on_progress, **fields
                )
    print(
        f"{dataset['id']} {dataset['status']}: {dataset['num_pairs']} pairs ({dataset['kind']}), "
        f"{dataset['name']!r}"
    )
    return EXIT_OK


def cmd_datasets_list(args: argparse.Namespace) -> int:
    """A table of datasets."""
    from client.output import datasets_table

    with client_from(args) as mapo:
        page = mapo.list_datasets(limit=args.limit)
    _console().print(datasets_table(page.data))
    return EXIT_OK


def cmd_jobs_create(args: argparse.Namespace) -> int:
    """Create a job from flags, --set items and an optional spec file; prints its id first."""
    body = build_job_body(read_spec_file(existing_file(args.spec)) if args.spec else None, args.sets)
    for field, value in (
        ("dataset_id", args.dataset),
        ("base_model", args.base_model),
        ("method", args.method),
        ("queue", args.queue),
        ("priority", args.priority),
    ):
        if value is not None:
            body[field] = value
    if args.steps is not None:
        body["hyperparameters"]["max_train_steps"] = args.steps
    missing = [
        flag
        for flag, field in (("--dataset", "dataset_id"), ("--base-model", "base_model"))
        if field not in body
    ]
    if missing:
        raise UsageError(f"jobs create needs {' and '.join(missing)} (or the field in --spec)")
    if args.estimate:
        return _print_estimate(args, body)
    with client_from(args) as mapo:
        job = mapo.create_job(**body, idempotency_key=args.idempotency_key)
        families = {m["name"]: m["family"] for m in mapo.list_base_models()}
    steps = job["progress"]["total_steps"]
    family = families.get(job["base_model"]) or "family unknown"
    print(f"{job['id']} {job['status']}: {job['method']} on {job['base_model']} ({family}), {steps} steps")
    return EXIT_OK


def _print_estimate(args: argparse.Namespace, body: dict[str, Any]) -> int:
    from client.estimates import estimate_lines

    with client_from(args) as mapo:
        estimate = mapo.estimate_job(**body)
    print("\n".join(estimate_lines(estimate)))
    return EXIT_OK


def cmd_datasets_get(args: argparse.Namespace) -> int:
    """The dataset as indented JSON."""
    with client_from(args) as mapo:
        print(json.dumps(mapo.get_dataset(args.dataset), indent=2))
    return EXIT_OK


def cmd_datasets_delete(args: argparse.Namespace) -> int:
    """Delete a dataset and its files."""
    with client_from(args) as mapo:
        mapo.delete_dataset(args.dataset)
    print(f"{args.dataset} deleted")
    return EXIT_OK


def cmd_jobs_list(args: argparse.Namespace) -> int:
    """A table of jobs: id, status, progress, eta, created."""
    from client.output import jobs_table

    with client_from(args) as mapo:
        page = mapo.list_jobs(status=args.status, limit=args.limit)
    _console().print(jobs_table(page.data))
    return EXIT_OK


def cmd_workers(args: argparse.Namespace) -> int:
    """A table of workers: id, status, queues, GPUs, version, last heartbeat."""
    from client.output import workers_table

    with client_from(args) as mapo:
        workers = mapo.list_workers(status=args.status)
    _console().print(workers_table(workers))
    return EXIT_OK


def cmd_base_models(args: argparse.Namespace) -> int:
    """A table of base models: name, family, prediction type, native size, family-specific fields."""
    from client.output import base_models_table

    with client_from(args) as mapo:
        models = mapo.list_base_models()
    _console().print(base_models_table(models))
    return EXIT_OK


def cmd_jobs_get(args: argparse.Namespace) -> int:
    """The job as indented JSON."""
    with client_from(args) as mapo:
        print(json.dumps(mapo.get_job(args.job), indent=2))
    return EXIT_OK


def cmd_jobs_watch(args: argparse.Namespace) -> int:
    """Follow a job to its end; the exit code says how it ended."""
    from client.output import watch_job

    console = _console()
    with client_from(args) as mapo:
        job = watch_job(mapo, args.job, console)
    error = job["error"]
    console.print(
        f"{job['id']} {job['status']}" + (f": {error['code']}: {error['message']}" if error else "")
    )
    return JOB_EXIT_CODES.get(job["status"], EXIT_ERROR)


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    """Request cancellation."""
    with client_from(args) as mapo:
        job = mapo.cancel_job(args.job)
    print(f"{job['id']} {job['status']}")
    return EXIT_OK


def cmd_jobs_delete(args: argparse.Namespace) -> int:
    """Delete a finished job and its stored outputs."""
    with client_from(args) as mapo:
        mapo.delete_job(args.job)
    print(f"{args.job} deleted")
    return EXIT_OK


def cmd_adapter(args: argparse.Namespace) -> int:
    """Download the adapter; the SDK checks its sha256 before keeping it."""
    with client_from(args) as mapo:
        path = mapo.download_adapter(args.job, args.output, format=args.format)
    print(f"{path} ({path.stat().st_size} bytes, sha256 verified)")
    return EXIT_OK


def cmd_samples(args: argparse.Namespace) -> int:
    """Save every validation image as step-NNNNNN_pI_{base,lora}.png, and sheet.png: the newest LoRA
    images under the base model's, one column per prompt."""
    from client.sheet import before_after_sheet, sheet_columns

    out_dir: Path = args.output or Path(f"{args.job}-samples")
    out_dir.mkdir(parents=True, exist_ok=True)

    def file_of(sample: dict[str, Any]) -> Path:
        side = "lora" if sample["with_lora"] else "base"
        return out_dir / f"step-{sample['step']:06d}_p{sample['index']}_{side}.png"

    with client_from(args) as mapo:
        samples = mapo.samples(args.job)
        for s in samples:
            mapo.download_sample(args.job, s["id"], file_of(s))
        why_none = "" if samples else f": {why_no_samples(mapo, args.job)}"
    print(f"{len(samples)} images in {out_dir}{why_none}")
    columns = sheet_columns(samples)
    if columns:
        before_after_sheet(columns, file_of).save(out_dir / "sheet.png")
        print(f"before/after sheet: {out_dir / 'sheet.png'}")
    return EXIT_OK


def why_no_samples(mapo: MapoClient, job_id: str) -> str:
    """Why a job has no validation images (yet)."""
    job = mapo.get_job(job_id)
    if not (job.get("validation") or {}).get("prompts"):
        return (
            "the job has no validation prompts, so it renders no images (create a job with "
            "validation.prompts, e.g. --set 'validation.prompts=[a red circle]', to get before/after images)"
        )
    if job["status"] in ("queued", "running", "cancelling"):
        return f"none rendered yet: the job is {job['status']} (the base model's images come when it starts)"
    return f"the job ended {job['status']} before rendering any"

"""Service overhead: one training job through the service (submit → succeeded) and the same spec through
`python -m trainer train`, model loading excluded, side by side.

    python -m bench.service_overhead                   # tiny SDXL, 64 px, 300 steps, 5 rounds
    python -m bench.service_overhead --steps 600 --rounds 5
    python -m bench.service_overhead --database-url postgresql+psycopg://postgres@127.0.0.1:5432/DB \\
        --broker-url redis://127.0.0.1:6379/15     # an existing, empty database and Redis db

The service is started with the commands `mapo serve` runs (uvicorn for the API, one Celery worker with
its webhook sender), on the embedded defaults (SQLite, the filesystem broker, local storage) unless
PostgreSQL and Redis are given; the demo pairs are uploaded through the API. The CLI trains on the same
pairs (the same demo set written directly) with the same spec. Both runs are cut at the two events both
emit, Started (the model is loaded) and Finished (the adapter is exported):

- start-up: service, the claim → Started (the worker's child imports torch, loads the model); CLI,
  spawn → Started. This is the model load that the comparison leaves out.
- queue: submit → claim (service only: the broker's delivery and the worker picking it up).
- train: Started → Finished: the steps, checkpoints, validation images, evaluation and export.
- tail: Finished → succeeded (service: the recorder's last write, the job's end) or → exit (CLI).

overhead = (queue + train + tail) of the service ÷ (train + tail) of the CLI. Per-step wall times (each
step's step_time_s) show whether recording events ever stalls a step. Rounds alternate which runs first;
the table shows medians. Times come from the event log (each event stamped when the trainer emitted it)
and the job's started_at / finished_at, all on this machine's clock.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.api_load import HOST, REPO, _free_port, _wait_listening
from bench.trainer_step import _model

PAIRS, RESOLUTION = 16, 64
VALIDATION = {"prompts": ["a large circle at the centre, flat illustration"], "num_inference_steps": 2}


@dataclass(frozen=True)
class Run:
    """One run's phases in seconds and its per-step wall times."""

    startup: float
    queue: float
    train: float
    tail: float
    step_times: list[float]

    @property
    def excluding_load(self) -> float:
        return self.queue + self.train + self.tail


def main() -> None:
    args = _parse()
    model = _model("sdxl", "tiny")
    hyperparameters = {
        "resolution": RESOLUTION,
        "train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_train_steps": args.steps,
        "learning_rate": 1e-4,
        "lora_rank": 4,
        "mixed_precision": "no",
        "cache_latents": True,
        "checkpoint_every_n_steps": max(1, args.steps // 3),
    }
    runs: dict[str, list[Run]] = {"service": [], "cli": []}
    with tempfile.TemporaryDirectory() as tmp, _service(Path(tmp), model, args) as (url, key):
        dataset_id = _upload_demo(url, key, Path(tmp))
        cli_dataset = _cli_dataset(Path(tmp))
        for round_ in range(args.rounds):
            order = ["cli", "service"] if round_ % 2 == 0 else ["service", "cli"]
            for kind in order:
                if kind == "cli":
                    run = _cli_run(model, cli_dataset, hyperparameters, Path(tmp) / f"cli-{round_}")
                else:
                    run = _service_run(url, key, dataset_id, hyperparameters)
                runs[kind].append(run)
                print(
                    f"  round {round_ + 1} {kind:8} start-up {run.startup:5.1f} s, queue {run.queue:4.2f} s, "
                    f"train {run.train:5.1f} s, tail {run.tail:4.2f} s",
                    file=sys.stderr,
                )
    _print_table(runs, args)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of the job")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--database-url", help="PostgreSQL URL of an empty database (default: SQLite)")
    parser.add_argument("--broker-url", help="Redis URL (default: the embedded filesystem broker)")
    return parser.parse_args()


@contextmanager
def _service(tmp: Path, model: Path, args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """The API and one worker as `mapo serve` starts them; yields the API's URL and an API key."""
    from core.settings import Settings
    from ops import admin
    from ops.serve import api_command, worker_command

    env = {k: v for k, v in os.environ.items() if not k.startswith("MAPO_")}
    env |= {"MAPO_DATA_DIR": str(tmp / "data"), "MAPO_BASE_MODELS": json.dumps({"tiny-sdxl": str(model)})}
    if args.database_url:
        env["MAPO_DATABASE_URL"] = args.database_url
    if args.broker_url:
        env["MAPO_BROKER_URL"] = args.broker_url
    settings = Settings(data_dir=tmp / "data", database_url=args.database_url or "")
    admin.migrate(settings)
    key = admin.create_key(settings, "bench")
    port = _free_port()
    log = (tmp / "service.log").open("wb")
    children = [
        subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True)
        for command in (api_command(HOST, port), worker_command(settings.queues))
    ]
    try:
        _wait_listening(port, children[0])
        yield f"http://{HOST}:{port}", key
    finally:
        for child in children:
            os.killpg(child.pid, signal.SIGTERM)
        for child in children:
            child.wait(timeout=60)
        log.close()


def _upload_demo(url: str, key: str, tmp: Path) -> str:
    from trainer.synthetic.demo_data import write_demo_upload

    upload = write_demo_upload(tmp / "demo.zip", kind="zip", num_pairs=PAIRS, resolution=RESOLUTION)
    with upload.open("rb") as stream:
        response = httpx.post(
            f"{url}/v1/datasets",
            files={"file": ("demo.zip", stream)},
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        )
    response.raise_for_status()
    dataset_id: str = response.json()["id"]
    return dataset_id


def _cli_dataset(tmp: Path) -> Path:
    from trainer.synthetic.demo_data import make_demo_dataset

    make_demo_dataset(tmp / "cli-dataset", num_pairs=PAIRS, resolution=RESOLUTION)
    return tmp / "cli-dataset"


def _cli_run(model: Path, dataset: Path, hyperparameters: dict[str, Any], out: Path) -> Run:
    """`python -m trainer train`, timing each JSON event line as it arrives."""
    spec = {
        "base_model": str(model),
        "method": "mapo",
        "seed": 0,
        "validation": VALIDATION,
        **hyperparameters,
    }
    out.mkdir(parents=True)
    (out / "spec.json").write_text(json.dumps(spec))
    command = [
        sys.executable,
        "-m",
        "trainer",
        "train",
        "--spec",
        str(out / "spec.json"),
        "--dataset",
        str(dataset),
        "--output",
        str(out / "run"),
    ]
    spawned = time.time()
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    at: dict[str, float] = {}
    steps: list[float] = []
    for line in process.stdout:
        event = json.loads(line)
        at.setdefault(event["type"], time.time())
        if event["type"] == "step":
            steps.append(event["metrics"]["step_time_s"])
    if process.wait() != 0:
        raise RuntimeError(f"python -m trainer train exited with {process.returncode}")
    exited = time.time()
    return Run(
        startup=at["started"] - spawned,
        queue=0.0,
        train=at["finished"] - at["started"],
        tail=exited - at["finished"],
        step_times=steps,
    )


def _service_run(url: str, key: str, dataset_id: str, hyperparameters: dict[str, Any]) -> Run:
    body = {
        "dataset_id": dataset_id,
        "base_model": "tiny-sdxl",
        "method": "mapo",
        "seed": 0,
        "hyperparameters": hyperparameters,
        "validation": VALIDATION,
    }
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        submitted = datetime.now(UTC)
        job = client.post("/v1/jobs", json=body).raise_for_status().json()
        while job["status"] not in ("succeeded", "failed", "cancelled"):
            time.sleep(1.0)  # seldom: the times come from the server, and each poll costs the CPU a step
            job = client.get(f"/v1/jobs/{job['id']}").raise_for_status().json()
        if job["status"] != "succeeded":
            raise RuntimeError(f"job {job['id']} ended {job['status']}: {job['error']}")
        events = _events(client, job["id"])
        steps = client.get(f"/v1/jobs/{job['id']}/metrics").json()["series"]["step_time_s"]["values"]
    claimed, finished = _time(job["started_at"]), _time(job["finished_at"])
    return Run(
        startup=(events["started"] - claimed).total_seconds(),
        queue=(claimed - submitted).total_seconds(),
        train=(events["finished"] - events["started"]).total_seconds(),
        tail=(finished - events["finished"]).total_seconds(),
        step_times=steps,
    )


def _events(client: httpx.Client, job_id: str) -> dict[str, datetime]:
    """When each event type first happened, from the job's event log."""
    at: dict[str, datetime] = {}
    after = None
    while True:
        params = {"limit": 200} | ({"after": after} if after is not None else {})
        page = client.get(f"/v1/jobs/{job_id}/events", params=params).raise_for_status().json()
        for event in page["data"]:
            at.setdefault(event["type"], _time(event["created_at"]))
        if not page["has_more"]:
            return at
        after = page["data"][-1]["id"]


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _print_table(runs: dict[str, list[Run]], args: argparse.Namespace) -> None:
    print(
        f"\ntiny SDXL, {RESOLUTION} px, {args.steps} steps, 2 pairs per step, fp32 on the CPU; seconds (step "
        f"times in ms), medians of {args.rounds} rounds; ratios are medians of each round's service ÷ cli"
    )
    print(
        f"{'run':9} {'start-up':>9} {'queue':>7} {'train':>7} {'tail':>6} {'excl. load':>11} "
        f"{'÷ cli':>6} {'train ÷ cli':>12} {'step p50':>9} {'step p95':>9}"
    )
    for kind, rows in runs.items():
        med = {
            f: statistics.median(getattr(r, f) for r in rows)
            for f in ("startup", "queue", "train", "tail", "excluding_load")
        }
        pairs = list(zip(rows, runs["cli"], strict=True))
        overall = statistics.median(r.excluding_load / c.excluding_load for r, c in pairs)
        train = statistics.median(r.train / c.train for r, c in pairs)
        steps = sorted(t for r in rows for t in r.step_times)
        p50, p95 = steps[len(steps) // 2], steps[int(len(steps) * 0.95)]
        print(
            f"{kind:9} {med['startup']:9.2f} {med['queue']:7.2f} {med['train']:7.2f} {med['tail']:6.2f} "
            f"{med['excluding_load']:11.2f} {overall:6.3f} {train:12.3f} {1000 * p50:9.1f} {1000 * p95:9.1f}"
        )


if __name__ == "__main__":
    main()

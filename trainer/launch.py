"""Training on several devices of one machine: `train()` under `accelerate launch`, one process per device.

`train_data_parallel` keeps `train()`'s contract for a spec with `gpus` > 1. It starts

    python -m accelerate.commands.launch --multi_gpu --num_processes <gpus> ... -m trainer train ...

(on a machine without CUDA the same with ACCELERATE_USE_CPU=1: torch.distributed over gloo, for tests),
reads the main process's events back from the trainer CLI's stdout (one JSON line each, see cli.py) and
hands them to `on_event` as the same typed events an in-process run emits. When `should_stop()` answers
True it sends SIGTERM to every rank: the ranks agree on a micro-step, checkpoint and exit, and the same
output folder resumes. A rank that fails ends the run with the rank's error code, or `rank_failed` and the
tail of the ranks' stderr.

A rank's typed error travels in a file of its own (`record_rank_error`, under the folder that
RANK_ERRORS_ENV names), not only as a stdout line: the ranks share one stdout pipe, and two ranks failing
at the same moment interleaved their error lines into one unreadable line, which turned the run's typed
error (invalid_dataset, say) into `rank_failed`. Of several ranks' errors the earliest is the run's.

The ranks write their events into a pipe that this process reads: if this process dies, the main rank's
next event write fails and the launcher takes the other ranks down, so no orphaned run goes on training.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

from trainer.errors import TrainingError
from trainer.events import Event, Finished, from_dict
from trainer.spec import TrainSpec

log = logging.getLogger(__name__)
POLL_SECONDS = 0.2
STDERR_TAIL_LINES = 40
# The folder into which each rank writes its typed error (set by `train_data_parallel` for the ranks).
RANK_ERRORS_ENV = "MAPO_RANK_ERRORS_DIR"


class RankFailedError(TrainingError):
    """A training process died without a typed training error (a crash, a kill, out of memory)."""

    code = "rank_failed"


class LaunchedTrainingError(TrainingError):
    """A rank reported a typed training error; `code` is that error's code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class LaunchResult:
    stopped: bool
    final_step: int
    exit_code: int


def _never() -> bool:
    return False


def train_data_parallel(
    spec: TrainSpec,
    dataset_dir: Path,
    output_dir: Path,
    *,
    on_event: Callable[[Event], None],
    should_stop: Callable[[], bool] = _never,
    cpu: bool | None = None,
) -> LaunchResult:
    """Run `spec` on `spec.gpus` processes (CUDA devices, or CPU processes if `cpu`; by default CPU
    where CUDA is missing) until they finish or stop; raises a `TrainingError` if a rank fails."""
    if cpu is None:
        import torch  # only to count devices; the ranks are separate processes

        cpu = not torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="mapo-launch-") as tmp:
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(spec.model_dump_json(), encoding="utf-8")
        rank_errors = Path(tmp) / "rank-errors"
        rank_errors.mkdir()
        command = launch_command(spec_file, dataset_dir, output_dir, num_processes=spec.gpus)
        env = {**os.environ, "ACCELERATE_USE_CPU": "1" if cpu else "0", RANK_ERRORS_ENV: str(rank_errors)}
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            start_new_session=True,  # a Ctrl-C or signal meant for the worker is not one for the ranks
        )
        run = _Run(on_event)
        readers = [
            threading.Thread(target=run.read_events, args=(process.stdout,), daemon=True),
            threading.Thread(target=run.read_stderr, args=(process.stderr,), daemon=True),
        ]
        for reader in readers:
            reader.start()
        stop_sent = _supervise(process, should_stop)
        for reader in readers:
            reader.join()
        run.error = first_rank_error(rank_errors) or run.error
    return run.outcome(process.returncode, stop_sent=stop_sent)


def record_rank_error(error: TrainingError) -> None:
    """In a rank started by `train_data_parallel`: leave `error` for the launcher in a file of this
    process's own (a no-op elsewhere). Written aside and renamed, so a rank killed while writing leaves
    no half record."""
    folder = os.environ.get(RANK_ERRORS_ENV)
    if not folder:
        return
    record = {"code": error.code, "message": error.message, "at": time.time()}
    final = Path(folder) / f"{os.getpid()}.json"
    partial = final.with_suffix(".partial")
    partial.write_text(json.dumps(record), encoding="utf-8")
    os.replace(partial, final)


def first_rank_error(folder: Path) -> tuple[str, str] | None:
    """(code, message) of the earliest error the ranks recorded in `folder`, or None if none did."""
    recorded = [r for r in map(_read_rank_error, sorted(folder.glob("*.json"))) if r is not None]
    if not recorded:
        return None
    _, code, message = min(recorded)
    return code, message


def _read_rank_error(path: Path) -> tuple[float, str, str] | None:
    record = _json_object(path.read_text(encoding="utf-8"))
    at = record.get("at") if record is not None else None
    if record is None or not isinstance(at, int | float):
        return None
    return float(at), str(record.get("code")), str(record.get("message"))


def launch_command(spec_file: Path, dataset_dir: Path, output_dir: Path, *, num_processes: int) -> list[str]:
    """`accelerate launch` of the trainer CLI on `num_processes` processes of this machine.

    `--multi_gpu` picks torchrun (one process per device); with ACCELERATE_USE_CPU=1 in the environment
    the same launcher runs CPU processes over gloo. Port 0: a free port, so that runs side by side do not
    collide on accelerate's default 29500.
    """
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--main_process_port",
        "0",
        "--mixed_precision",
        "no",  # the trainer sets it from the spec
        "--dynamo_backend",
        "no",
        "-m",
        "trainer",
        "train",
        "--spec",
        str(spec_file),
        "--dataset",
        str(dataset_dir),
        "--output",
        str(output_dir),
    ]


def _supervise(process: subprocess.Popen[str], should_stop: Callable[[], bool]) -> bool:
    """Wait for the launcher, forwarding a stop request to the ranks; True if a stop was sent."""
    signalled: set[int] = set()
    stopping = False
    while True:
        try:
            process.wait(timeout=POLL_SECONDS)
            return stopping
        except subprocess.TimeoutExpired:
            pass
        stopping = stopping or should_stop()
        if stopping:
            # Again at every poll: a rank the launcher had not started yet at the first try gets it too.
            signalled |= _terminate_ranks(process.pid, skip=signalled)


def _terminate_ranks(launcher_pid: int, *, skip: set[int]) -> set[int]:
    """SIGTERM to the launcher's children (the ranks), not to the launcher itself: torchrun would give
    them 30 s before killing them, and a checkpoint may take longer."""
    sent: set[int] = set()
    try:
        ranks = psutil.Process(launcher_pid).children()
    except psutil.NoSuchProcess:
        return sent
    for rank in ranks:
        if rank.pid in skip:
            continue
        try:
            rank.send_signal(signal.SIGTERM)
            sent.add(rank.pid)
        except psutil.NoSuchProcess:
            continue
    return sent


@dataclass
class _Run:
    """What the ranks reported: events go on to `on_event`, the rest is kept to explain a failure."""

    on_event: Callable[[Event], None]
    finished: Finished | None = None
    error: tuple[str, str] | None = None
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_TAIL_LINES))

    def read_events(self, stream: Iterable[str] | IO[str] | None) -> None:
        for line in stream or ():
            record = _json_object(line)
            if record is None:
                log.info("trainer: %s", line.rstrip())
            elif record.get("type") == "error":
                self.error = self.error or (str(record.get("code")), str(record.get("message")))
            else:
                self._forward(record)

    def _forward(self, record: dict[str, object]) -> None:
        try:
            event = from_dict(record)
        except ValueError as exc:
            log.warning("trainer: ignoring an unreadable event (%s): %s", exc, record)
            return
        if isinstance(event, Finished):
            self.finished = event
        self.on_event(event)

    def read_stderr(self, stream: Iterable[str] | IO[str] | None) -> None:
        for line in stream or ():
            self.stderr_tail.append(line.rstrip())
            log.debug("trainer stderr: %s", line.rstrip())

    def outcome(self, exit_code: int, *, stop_sent: bool) -> LaunchResult:
        if self.error is not None:
            raise LaunchedTrainingError(*self.error)
        finished = self.finished
        if finished is not None:
            # The main rank ended the run and wrote what it had to; ranks stopped by a signal exit 130,
            # which the launcher reports as a failure.
            return LaunchResult(finished.stopped, finished.step, exit_code)
        if stop_sent:
            # Stopped before the ranks could say so (still starting up, say): nothing was trained since
            # the newest complete checkpoint, which the next run resumes from.
            return LaunchResult(True, finished.step if finished else 0, exit_code)
        tail = "\n".join(self.stderr_tail)
        raise RankFailedError(f"a training process failed (launcher exit code {exit_code}); stderr:\n{tail}")


def _json_object(line: str) -> dict[str, object] | None:
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None

"""Graceful shutdown: a worker told to stop checkpoints its job and hands it back instead of losing steps.

Celery's warm shutdown (SIGTERM to the main process, what `docker stop` and `mapo serve` send) waits for
the running task, which may train for hours. So the main process forwards the request to its pool
children as SIGUSR2 (billiard uses SIGUSR1 for soft time limits). The child running a job sees
`requested()` turn true, the trainer stops at the next micro-step and checkpoints, and the runner
requeues the job with a fresh message for the next worker. The main process marks itself too, so a
child forked during the shutdown (to run a message that was already on its way) inherits the mark and
hands that message back instead of starting a job it would not be allowed to finish.

An idle child ignores the signal (`ignore_in_idle_child`, at fork): billiard would otherwise exit it
mid-shutdown and fork a replacement while the pool is being torn down, a race that once left a worker
that did not stop. A child installs the real handler only when it starts a job.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import psutil

GRACEFUL_STOP_SIGNAL = signal.SIGUSR2
_requested = threading.Event()


def requested() -> bool:
    """True once this process was asked to stop (trainer's should_stop polls it)."""
    return _requested.is_set()


def ignore_in_idle_child() -> None:
    """At fork, in a pool child: ignore graceful-stop requests until a job starts. (Billiard leaves an
    ignored signal alone when it installs its own exit handlers after the process-init hooks.)"""
    signal.signal(GRACEFUL_STOP_SIGNAL, signal.SIG_IGN)


def install_child_handler() -> None:
    """In a pool child: remember a graceful-stop request instead of dying on it."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        _requested.set()

    signal.signal(GRACEFUL_STOP_SIGNAL, on_signal)


def forward_to_children(exclude: frozenset[int] = frozenset()) -> None:
    """In the main process: ask every pool child to stop gracefully, and mark children forked later.
    `exclude`: pids of children that are not pool processes (the webhook sender stops on SIGTERM)."""
    _requested.set()
    for child in psutil.Process().children():
        if child.pid in exclude:
            continue
        try:
            child.send_signal(GRACEFUL_STOP_SIGNAL)
        except psutil.NoSuchProcess:
            continue

"""Each GPU worker starts a webhook sender (worker/webhooks/app.py) beside it and stops it when it stops,
so wherever jobs train, their webhooks are sent (`mapo serve` and `celery -A worker.celery_app worker`
need nothing else). With MAPO_WEBHOOK_SENDER=false the operator runs senders separately."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from core.queue import WEBHOOK_QUEUE
from core.settings import Settings

log = logging.getLogger(__name__)
STOP_GRACE_S = 20.0
# Tells the sender which process started it: when that process is gone, the sender stops too.
PARENT_PID_ENV = "MAPO_WEBHOOK_SENDER_PARENT_PID"


def start_sender(settings: Settings) -> subprocess.Popen[bytes] | None:
    """Start a sender process (None where senders run on their own); it shares our output and stops by
    itself if this process dies without stopping it."""
    if not settings.webhook_sender:
        return None
    command = [
        *(sys.executable, "-m", "celery", "-A", "worker.webhooks.app", "worker", "-Q", WEBHOOK_QUEUE),
        *("--pool", "threads", "--concurrency", str(settings.webhook_sender_concurrency)),
        *("--loglevel", "INFO", "--hostname", f"webhooks-{os.getpid()}@%h"),
    ]
    process = subprocess.Popen(command, env={**os.environ, PARENT_PID_ENV: str(os.getpid())})
    log.info("started the webhook sender (pid %d)", process.pid)
    return process


def ask_sender_to_stop(process: subprocess.Popen[bytes]) -> None:
    """Start the sender's warm shutdown now (SIGTERM), so that it runs alongside the worker's own (each
    takes seconds) instead of after it; `stop_sender` then waits for it."""
    if process.poll() is None:
        process.terminate()


def stop_sender(process: subprocess.Popen[bytes]) -> None:
    """Warm shutdown (attempts in flight finish), then a kill after STOP_GRACE_S. (A repeated SIGTERM
    only asks Celery for the same warm shutdown again.)"""
    ask_sender_to_stop(process)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        log.warning("the webhook sender did not stop within %.0f s; killing it", STOP_GRACE_S)
        process.kill()
        process.wait()

"""`mapo serve`: the embedded single-machine service in the foreground.

SQLite, local storage and kombu's filesystem broker, all under MAPO_DATA_DIR (default ./mapo-data). It
migrates the database, builds the offline tiny models on first start (one per family, allowed as
`tiny-<family>`: `tiny-sd`, `tiny-flux`, ... beside the shipped pre-trained `shapes-*` bases and the
operator's MAPO_BASE_MODELS), prints a first API key, then supervises two child processes: the API
(uvicorn) and one Celery worker. A worker that dies is restarted; if the API dies everything stops with
exit code 1. SIGTERM/SIGINT stop both children and exit 0. The children never outlive the supervisor: each
is asked (Linux's parent-death signal) to get SIGTERM when it dies, even by SIGKILL, so the worker still
hands its job back. One instance per data directory (a lock file) and per port: a second one refuses to
start. What it prints (ops/terminal.py): its own lines, a line per job start and end, and the children's
errors; `--log-level` warning, info (one line per request) or debug (all of it, as the children write it)
for more."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import httpx
from sqlalchemy.exc import SQLAlchemyError

from core.db import Database
from core.settings import Settings
from ops import admin
from ops.terminal import DEFAULT_LOG_LEVEL, JobAnnouncer, relay, threshold, uvicorn_logging
from trainer.families import FAMILIES
from trainer.synthetic.base_models import shipped_base_models

TINY_MODELS = {f"tiny-{name}": name for name in FAMILIES}  # one random tiny model of every family
BUILT_MARKER = ".mapo-built"
FIRST_TENANT = "default"
POLL_S = 0.5
STOP_GRACE_S = 30.0
# uvicorn otherwise waits for open event streams, which last as long as their job.
API_GRACEFUL_SHUTDOWN_S = 5
# A worker that ran this long before dying was healthy: restart it at once, not after a back-off.
HEALTHY_RUN_S = 60.0
MAX_RESTART_DELAY_S = 30.0
LOCK_FILE = "serve.lock"
API_LOG_CONFIG = "serve-api-logging.json"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class ServeError(Exception):
    """The service cannot start; the message says why."""


def serve(*, host: str, port: int, log_level: str = DEFAULT_LOG_LEVEL) -> int:
    """Run until a signal (exit 0) or until the API process dies (exit 1); print the children's output
    down to `log_level` (see ops/terminal.py)."""
    with contextlib.ExitStack() as held:
        try:
            settings = embedded_settings()
            held.enter_context(instance_lock(settings.data_dir))
            check_port_free(host, port)
            log(f"data in {settings.data_dir}")
            admin.migrate(settings, quiet=threshold(log_level) > threshold("info"))
            base_models = offered_base_models(settings)
            log(f"base models: {', '.join(sorted(base_models))}")
            announce_first_key(settings)
        except ServeError as exc:
            log(f"cannot start: {exc}")
            return 1
        return _supervise(settings, base_models, host=host, port=port, log_level=log_level)


def _supervise(
    settings: Settings, base_models: dict[str, str], *, host: str, port: int, log_level: str
) -> int:
    log_config = settings.data_dir / API_LOG_CONFIG
    log_config.write_text(json.dumps(uvicorn_logging(log_level)), encoding="utf-8")
    supervisor = Supervisor(
        api=Child("api", api_command(host, port, log_config=log_config, log_level=log_level)),
        worker=Child("worker", worker_command(settings.queues, log_level=log_level)),
        env=child_env(settings, base_models),
        ready_url=f"{local_url(host, port)}/readyz",
        # debug: the children write straight to our output, as they format it.
        relay_from=None if log_level == "debug" else threshold(log_level),
        jobs=JobAnnouncer(Database(settings), log),
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, supervisor.request_stop)
    return supervisor.run()


@contextlib.contextmanager
def instance_lock(data_dir: Path) -> Iterator[None]:
    """Hold `data_dir`/serve.lock for the block; ServeError if another `mapo serve` holds it. The kernel
    drops the lock when its holder dies, however it dies, so a stale file never blocks a start."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    with path.open("a+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ServeError(f"another `mapo serve` (pid {_holder(lock)}) is running on {data_dir}") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def _holder(lock: TextIO) -> str:
    lock.seek(0)
    return lock.read().strip() or "unknown"


OTHER_PORT = 8001  # what the port-clash message suggests (and README's example)


def check_port_free(host: str, port: int) -> None:
    """ServeError if something already listens on (host, port), before any child starts: otherwise the
    readiness probe would reach that server and call this instance ready."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host or "0.0.0.0", port))
        except OSError as exc:
            raise ServeError(
                f"{host}:{port} is in use ({exc.strerror}); is another server running? To serve beside it: "
                f"mapo serve --port {OTHER_PORT}, and export MAPO_API_URL=http://{host}:{OTHER_PORT} for "
                "the mapo commands"
            ) from None


def die_with_parent(parent: int) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGTERM when the supervisor dies (Linux; elsewhere a no-op), and
    exits at once if the supervisor is already gone."""

    def arrange() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return arrange


_OUTPUT_LOCK = threading.Lock()


def log(message: str) -> None:
    """One line of the supervisor's own output."""
    _write(f"[mapo serve] {message}")


def _write(line: str) -> None:
    """One whole line on our output; the relays of both children write through here too."""
    with _OUTPUT_LOCK:
        print(line, flush=True)


def embedded_settings() -> Settings:
    """Settings from the environment with every folder made absolute, so that both children (and any
    working directory) see the same database, storage and broker."""
    settings = Settings()
    update: dict[str, object] = {"data_dir": settings.data_dir.resolve()}
    if settings.storage_dir is not None:
        update["storage_dir"] = settings.storage_dir.resolve()
    return settings.model_copy(update=update)


def child_env(settings: Settings, base_models: dict[str, str]) -> dict[str, str]:
    """The environment of the API and the worker: ours plus the resolved folders and base models."""
    env = {
        **os.environ,
        "MAPO_DATA_DIR": str(settings.data_dir),
        "MAPO_BASE_MODELS": json.dumps(base_models),
        "PYTHONUNBUFFERED": "1",
    }
    if settings.storage_dir is not None:
        env["MAPO_STORAGE_DIR"] = str(settings.storage_dir)
    return env


def offered_base_models(settings: Settings) -> dict[str, str]:
    """The random tiny models (built here on first start), the shipped pre-trained ones, and the
    operator's MAPO_BASE_MODELS, which win on a name clash."""
    built = build_tiny_models(settings.data_dir / "models")
    return {**built, **shipped_base_models(), **settings.base_models}


def build_tiny_models(models_dir: Path) -> dict[str, str]:
    """Build the missing tiny models (in parallel, in subprocesses: torch stays out of this process);
    a folder without the marker of a finished build is rebuilt from scratch."""
    building: dict[str, subprocess.Popen[bytes]] = {}
    for name, family in TINY_MODELS.items():
        out = models_dir / name
        if (out / BUILT_MARKER).exists():
            continue
        shutil.rmtree(out, ignore_errors=True)
        log(f"first start: building the offline tiny model {name} in {out}")
        command = [sys.executable, "-m", "trainer", "make-tiny-model", "--family", family, "--out", str(out)]
        building[name] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    failures = []
    for name, process in building.items():
        output, _ = process.communicate()
        if process.returncode != 0:
            failures.append(f"{name} (exit {process.returncode}):\n{output.decode(errors='replace')[-2000:]}")
        else:
            (models_dir / name / BUILT_MARKER).write_text("built by mapo serve\n", encoding="utf-8")
    if failures:
        raise ServeError("building the tiny models failed: " + "\n".join(failures))
    return {name: str(models_dir / name) for name in TINY_MODELS}


def announce_first_key(settings: Settings) -> None:
    """On a database without any API key, create tenant "default" with one and print it (only now)."""
    if admin.has_api_key(settings):
        return
    key = admin.create_key(settings, FIRST_TENANT, label="first start")
    log(f'created tenant "{FIRST_TENANT}" and its API key; it is shown only this once:')
    log(f"    export MAPO_API_KEY={key}")
    log("more keys: mapo keys create --tenant NAME")


def api_command(
    host: str, port: int, *, log_config: Path | None = None, log_level: str = DEFAULT_LOG_LEVEL
) -> list[str]:
    """uvicorn serving the app factory, logging through `log_config` (uvicorn_logging) when given."""
    return [
        *(sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory"),
        *("--host", host, "--port", str(port)),
        *("--timeout-graceful-shutdown", str(API_GRACEFUL_SHUTDOWN_S)),
        *(("--log-config", str(log_config)) if log_config is not None else ()),
        *("--log-level", log_level),
    ]


def worker_command(queues: list[str], *, log_level: str = DEFAULT_LOG_LEVEL) -> list[str]:
    """One Celery worker, one training at a time, on every training queue: the embedded service has this
    one worker, so a job sent to any configured queue (MAPO_QUEUES) must reach it. Its banner only at
    debug."""
    return [
        *(sys.executable, "-m", "celery", "-A", "worker.celery_app"),
        *(() if log_level == "debug" else ("--quiet",)),  # a celery option, not a worker one
        *("worker", "-Q", ",".join(queues), "--concurrency", "1", "--loglevel", log_level.upper()),
        # Unique per service, so two services on one machine do not share a node name.
        *("--hostname", f"mapo-{os.getpid()}@%h"),
    ]


def local_url(host: str, port: int) -> str:
    """The URL to reach a server bound to `host` from this machine."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass
class Child:
    """A supervised process; each runs in a session of its own so its whole tree can be signalled."""

    name: str
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    restart_at: float | None = None


@dataclass
class Supervisor:
    """Starts the API and the worker, restarts the worker, and stops both on request."""

    api: Child
    worker: Child
    env: dict[str, str]
    ready_url: str
    relay_from: int | None  # the lowest level of the children's records shown; None: their raw output
    jobs: JobAnnouncer
    _stop: threading.Event = field(default_factory=threading.Event)

    def request_stop(self, signum: int = signal.SIGTERM, _frame: object = None) -> None:
        """Signal handler: stop at the next poll."""
        self._stop.set()

    def run(self) -> int:
        """Supervise until asked to stop (0) or the API exits (1); the children are stopped either way."""
        self._start(self.api)
        self._start(self.worker)
        announced = False
        try:
            while not self._stop.wait(POLL_S):
                code = _running(self.api)
                if code is not None:
                    log(f"the API exited with code {code}; stopping the service")
                    return 1
                self._revive_worker()
                self._announce_jobs()
                if not announced and _is_ready(self.ready_url):
                    base = self.ready_url.removesuffix("/readyz")
                    log(f"ready at {base} (dashboard at {base}/ui/, OpenAPI UI at {base}/docs)")
                    announced = True
            log("stopping")
            return 0
        finally:
            self._stop_children()

    def _announce_jobs(self) -> None:
        try:
            self.jobs.poll()
        except SQLAlchemyError as exc:  # a busy database delays the lines; it never stops the service
            log(f"could not read the jobs for their start and end lines: {exc}")

    def _start(self, child: Child) -> None:
        piped = self.relay_from is not None
        child.process = subprocess.Popen(
            child.command,
            env=self.env,
            start_new_session=True,
            preexec_fn=die_with_parent(os.getpid()),
            stdout=subprocess.PIPE if piped else None,
            stderr=subprocess.STDOUT if piped else None,
        )
        if self.relay_from is not None and child.process.stdout is not None:
            relay(child.process.stdout, self.relay_from, _write)
        child.started_at, child.restart_at = time.monotonic(), None
        log(f"started the {child.name} (pid {child.process.pid})")

    def _revive_worker(self) -> None:
        worker, now = self.worker, time.monotonic()
        code = _running(worker)
        if code is None:
            return
        if worker.restart_at is None:
            worker.restarts = 0 if now - worker.started_at > HEALTHY_RUN_S else worker.restarts + 1
            delay = min(2.0**worker.restarts - 1, MAX_RESTART_DELAY_S)
            log(f"the worker exited with code {code}; restarting it in {delay:g}s")
            worker.restart_at = now + delay
        if now >= worker.restart_at:
            self._start(worker)

    def _stop_children(self) -> None:
        children = [c.process for c in (self.api, self.worker) if c.process is not None]
        for process in children:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for process in children:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"pid {process.pid} did not stop within {STOP_GRACE_S:g}s; killing it")
            # Also whatever it started (a Celery pool child mid-training, say) and left behind.
            _kill_group(process.pid)
            process.wait()


def _running(child: Child) -> int | None:
    """None while the child runs, else its exit code."""
    return None if child.process is None else child.process.poll()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _is_ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False

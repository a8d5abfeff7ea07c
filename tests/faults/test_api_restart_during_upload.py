"""The API process is killed (SIGKILL) in the middle of an upload: after a restart no half-written dataset
is visible and no partial file is left behind, and uploads work again."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.commands import REPO_ROOT, mapo, service_env
from tests.support.ports import free_port
from tests.support.processes import is_ready
from trainer.synthetic.demo_data import write_demo_upload

BOUNDARY = "mapo-test-boundary"


class Api:
    """uvicorn with the embedded defaults on `data_dir`; start and kill it as often as a test likes."""

    def __init__(self, data_dir: Path) -> None:
        self.env = service_env(data_dir, MAPO_BASE_MODELS=json.dumps({}))
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = mapo("keys", "create", "--tenant", "uploader", env=self.env).stdout.split()[-1]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "api.main:create_app",
            "--factory",
            "--port",
            str(self.port),
        ]
        with (self.data_dir / "api.log").open("ab") as log:
            self.process = subprocess.Popen(command, env=self.env, cwd=REPO_ROOT, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while not is_ready(self.url):
            assert self.process.poll() is None and time.monotonic() < deadline, self.log()
            time.sleep(0.2)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def log(self) -> str:
        return (self.data_dir / "api.log").read_text(errors="replace")

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers={"Authorization": f"Bearer {self.key}"}, timeout=30)


def leftovers(data_dir: Path) -> list[str]:
    """Every file under the upload scratch space and the dataset storage."""
    roots = [data_dir / "tmp", data_dir / "storage" / "tenants"]
    found = (p for root in roots if root.exists() for p in root.rglob("*") if p.is_file())
    return sorted(str(p.relative_to(data_dir)) for p in found)


def send_upload(api: Api, archive: Path) -> socket.socket:
    """Send the whole upload request over a raw socket and leave it open, not reading the answer."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="pairs.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    length = len(head) + archive.stat().st_size + len(tail)
    sock = socket.create_connection(("127.0.0.1", api.port))
    request = (
        f"POST /v1/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {api.key}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()
    sock.sendall(request + head + archive.read_bytes() + tail)
    return sock


def wait_for(probe: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met")


def test_upload_cut_by_an_api_kill_leaves_nothing_after_the_restart(tmp_path: Path) -> None:
    archive = tmp_path / "pairs.zip"
    write_demo_upload(archive, kind="zip", num_pairs=800, resolution=64)
    api = Api(tmp_path / "data")
    api.start()
    try:
        sock = send_upload(api, archive)
        # The API dies while it unpacks and checks the archive into the dataset's folder.
        datasets = api.data_dir / "storage" / "tenants"
        wait_for(lambda: sum(1 for p in datasets.rglob("*.png")) > 20)
        api.kill()
        sock.close()
        assert leftovers(api.data_dir), "the kill left a partial upload behind (the fault was injected)"

        api.start()
        assert leftovers(api.data_dir) == [], "the restart swept the abandoned upload"
        assert api.get("/v1/datasets").json()["data"] == []
        with archive.open("rb") as stream:
            again = httpx.post(
                f"{api.url}/v1/datasets",
                files={"file": ("pairs.zip", stream)},
                headers={"Authorization": f"Bearer {api.key}"},
                timeout=120,
            )
        assert again.status_code == 201, again.text
        assert [d["num_pairs"] for d in api.get("/v1/datasets").json()["data"]] == [800]
    finally:
        if api.process is not None and api.process.poll() is None:
            api.kill()


def send_part_halfway(api: Api, upload_id: str, part: bytes) -> socket.socket:
    """A PATCH that declares all of `part` but sends only its first half, and stays open."""
    sock = socket.create_connection(("127.0.0.1", api.port))
    head = (
        f"PATCH /v1/uploads/{upload_id} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {api.key}\r\n"
        "Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
        f"Content-Length: {len(part)}\r\n\r\n"
    ).encode()
    sock.sendall(head + part[: len(part) // 2])
    return sock


def test_a_resumable_upload_cut_by_an_api_kill_loses_only_the_part_in_flight(tmp_path: Path) -> None:
    archive = tmp_path / "pairs.zip"
    write_demo_upload(archive, kind="zip", num_pairs=200, resolution=64)
    data = archive.read_bytes()
    api = Api(tmp_path / "data")
    api.start()
    tus = {"Authorization": f"Bearer {api.key}", "Tus-Resumable": "1.0.0"}
    try:
        created = httpx.post(f"{api.url}/v1/uploads", headers={**tus, "Upload-Length": str(len(data))})
        upload_id = created.json()["id"]
        sock = send_part_halfway(api, upload_id, data)
        (received,) = (api.data_dir / "tmp" / "uploads").glob(f"*/{upload_id}/data")
        wait_for(lambda: received.stat().st_size >= len(data) // 4)
        api.kill()
        sock.close()

        api.start()
        head = httpx.head(f"{api.url}/v1/uploads/{upload_id}", headers=tus)
        held = int(head.headers["Upload-Offset"])
        # Everything the kernel took before the kill is kept, and it is the file's own first bytes.
        assert len(data) // 4 <= held <= len(data) // 2
        assert received.read_bytes() == data[:held]
        rest = httpx.patch(
            f"{api.url}/v1/uploads/{upload_id}",
            content=data[held:],
            headers={**tus, "Upload-Offset": str(held), "Content-Type": "application/offset+octet-stream"},
            timeout=60,
        )
        assert rest.status_code == 204, rest.text
        made = httpx.post(f"{api.url}/v1/uploads/{upload_id}/dataset", json={}, headers=tus, timeout=120)
        assert made.status_code == 201, made.text
        assert made.json()["num_pairs"] == 200
    finally:
        if api.process is not None and api.process.poll() is None:
            api.kill()


def test_the_cli_upload_resumes_on_its_own_across_an_api_restart(tmp_path: Path) -> None:
    archive = tmp_path / "pairs.zip"
    write_demo_upload(archive, kind="zip", num_pairs=400, resolution=64)
    size = archive.stat().st_size
    api = Api(tmp_path / "data")
    api.start()
    try:
        env = {**api.env, "MAPO_API_URL": api.url, "MAPO_API_KEY": api.key, "XDG_STATE_HOME": str(tmp_path)}
        # Many small parts, so that the kill lands in the middle of the upload.
        command = [sys.executable, "-m", "client", "datasets", "upload", str(archive), "--name", "resumed"]
        command += ["--part-bytes", str(64 << 10)]
        with (tmp_path / "cli.log").open("wb") as log:
            cli = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log)
            uploads = api.data_dir / "tmp" / "uploads"
            wait_for(lambda: any(p.stat().st_size > size // 3 for p in uploads.glob("*/*/data")))
            api.kill()
            time.sleep(1)
            api.start()
            out, _ = cli.communicate(timeout=300)
        assert cli.returncode == 0, (tmp_path / "cli.log").read_text()
        dataset_id = out.decode().split()[0]
        dataset = api.get(f"/v1/datasets/{dataset_id}").json()
        assert (dataset["num_pairs"], dataset["bytes"], dataset["name"]) == (400, size, "resumed")
        assert [d["id"] for d in api.get("/v1/datasets").json()["data"]] == [dataset_id]
    finally:
        if api.process is not None and api.process.poll() is None:
            api.kill()

"""`mapo serve` as a process: supervision of its children, first-start duties, and the tiny-model build."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ops.serve import BUILT_MARKER, OTHER_PORT, TINY_MODELS, ServeError, build_tiny_models, check_port_free
from tests.support.commands import REPO_ROOT, service_env
from tests.support.ports import free_port
from trainer.synthetic.demo_data import write_demo_upload

CHILD = re.compile(r"started the (api|worker) \(pid (\d+)\)")


class Serve:
    """A running `python -m client serve` with its output in a file."""

    def __init__(self, data_dir: Path, log: Path, *options: str, port: int | None = None) -> None:
        self.log = log
        command = [sys.executable, "-m", "client", "serve", "--port", str(port or free_port()), *options]
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=service_env(data_dir), stdout=out, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, *, count: int = 1, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, self.output())) < count:
            assert time.monotonic() < deadline, f"no {pattern!r} x{count} within {timeout}s:\n{self.output()}"
            time.sleep(0.2)

    def pids(self, name: str) -> list[int]:
        return [int(pid) for child, pid in CHILD.findall(self.output()) if child == name]

    def kill_all(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for _, pid in CHILD.findall(self.output()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid), signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data dir whose tiny models count as built, so that starting does not spend time building them."""
    for name in TINY_MODELS:
        (tmp_path / "data" / "models" / name).mkdir(parents=True)
        (tmp_path / "data" / "models" / name / BUILT_MARKER).touch()
    return tmp_path / "data"


@pytest.fixture
def started(data_dir: Path, tmp_path: Path) -> Iterator[Serve]:
    serve = Serve(data_dir, tmp_path / "first.log")
    yield serve
    serve.kill_all()


@pytest.mark.slow
def test_a_dead_worker_is_restarted_and_a_dead_api_stops_everything(started: Serve) -> None:
    started.wait_for("ready at")
    assert "export MAPO_API_KEY=mapo_" in started.output()
    [worker] = started.pids("worker")
    os.killpg(worker, signal.SIGKILL)
    started.wait_for(r"started the worker", count=2)
    assert "the worker exited with code -9; restarting it" in started.output()

    [api] = started.pids("api")
    os.kill(api, signal.SIGKILL)
    assert started.process.wait(timeout=60) == 1
    assert "the API exited with code -9" in started.output()
    assert not any(alive(pid) for pid in started.pids("api") + started.pids("worker"))


@pytest.mark.slow
def test_a_second_start_prints_no_key_and_sigterm_exits_0(data_dir: Path, tmp_path: Path) -> None:
    for run, expect_key in (("first", True), ("second", False)):
        serve = Serve(data_dir, tmp_path / f"{run}.log")
        try:
            serve.wait_for("ready at")
            assert ("MAPO_API_KEY=" in serve.output()) is expect_key
            serve.process.send_signal(signal.SIGTERM)
            assert serve.process.wait(timeout=60) == 0
            assert not any(alive(pid) for pid in serve.pids("api") + serve.pids("worker"))
        finally:
            serve.kill_all()


@pytest.mark.slow
def test_a_half_built_model_is_rebuilt_and_a_built_one_kept(tmp_path: Path) -> None:
    (tmp_path / "tiny-sd").mkdir()
    (tmp_path / "tiny-sd" / BUILT_MARKER).touch()
    (tmp_path / "tiny-sdxl").mkdir()
    (tmp_path / "tiny-sdxl" / "leftover").touch()

    assert build_tiny_models(tmp_path) == {name: str(tmp_path / name) for name in TINY_MODELS}
    assert sorted(p.name for p in (tmp_path / "tiny-sd").iterdir()) == [BUILT_MARKER]
    rebuilt = {p.name for p in (tmp_path / "tiny-sdxl").iterdir()}
    assert "leftover" not in rebuilt and {BUILT_MARKER, "model_index.json", "unet"} <= rebuilt


@pytest.mark.slow
def test_kill_9_of_the_supervisor_takes_its_children_down(started: Serve) -> None:
    started.wait_for("ready at")
    children = started.pids("api") + started.pids("worker")
    started.process.kill()
    started.process.wait()
    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in children), "a child outlived `mapo serve`"


@pytest.mark.slow
def test_a_second_instance_on_the_same_data_dir_or_port_refuses_to_start(
    started: Serve, data_dir: Path, tmp_path: Path
) -> None:
    started.wait_for("ready at")
    second = Serve(data_dir, tmp_path / "second.log")
    assert second.process.wait(timeout=60) == 1
    assert f"another `mapo serve` (pid {started.process.pid}) is running" in second.output()
    assert "ready at" not in second.output()

    port = int(re.findall(r"ready at http://[^:]+:(\d+)", started.output())[0])
    elsewhere = Serve(tmp_path / "other-data", tmp_path / "third.log", port=port)
    assert elsewhere.process.wait(timeout=60) == 1
    assert f":{port} is in use" in elsewhere.output() and "ready at" not in elsewhere.output()


def api_of(serve: Serve) -> httpx.Client:
    """A client of the ready service, with the first-start key it printed."""
    url = re.findall(r"ready at (http://\S+)", serve.output())[0]
    key = re.findall(r"MAPO_API_KEY=(\S+)", serve.output())[0]
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


@pytest.mark.slow
def test_the_terminal_shows_the_operator_lines_and_no_line_per_request(
    data_dir: Path, tmp_path: Path
) -> None:
    serve = Serve(data_dir, tmp_path / "serve.log")
    try:
        serve.wait_for("ready at")
        demo = tmp_path / "demo.zip"
        write_demo_upload(demo, kind="zip", num_pairs=2, resolution=16, seed=0)
        with api_of(serve) as api:
            assert all(api.get("/v1/jobs").status_code == 200 for _ in range(20))
            with demo.open("rb") as upload:
                dataset = api.post("/v1/datasets", files={"file": ("demo.zip", upload)}).json()
            body = {
                "dataset_id": dataset["id"],
                "base_model": "tiny-sd",
                "hyperparameters": {"max_train_steps": 2},
            }
            job = api.post("/v1/jobs", json=body).json()
        # tiny-sd is only a built marker here, so the job starts and then fails loading it.
        serve.wait_for(rf"job {job['id']} started", timeout=120)
        serve.wait_for(rf"job {job['id']} failed: \w+", timeout=120)
        output = serve.output()
        assert "/v1/jobs HTTP/1.1" not in output and "/readyz" not in output
        for noise in ("[queues]", "SecurityWarning", "No hostname", "alembic", "Uvicorn running"):
            assert noise not in output, f"{noise!r} in:\n{output}"
    finally:
        serve.kill_all()


@pytest.mark.slow
def test_log_level_debug_shows_each_request_and_celerys_output(data_dir: Path, tmp_path: Path) -> None:
    serve = Serve(data_dir, tmp_path / "serve.log", "--log-level", "debug")
    try:
        serve.wait_for("ready at")
        with api_of(serve) as api:
            assert api.get("/v1/jobs").status_code == 200
        serve.wait_for(r'"GET /v1/jobs HTTP/1.1" 200')
        serve.wait_for(r"\[queues\]")
    finally:
        serve.kill_all()


def test_a_port_in_use_is_refused_with_how_to_serve_on_another_and_reach_it() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServeError) as refused:
            check_port_free("127.0.0.1", port)
    message = str(refused.value)
    assert f"127.0.0.1:{port} is in use" in message
    assert f"mapo serve --port {OTHER_PORT}" in message
    assert f"MAPO_API_URL=http://127.0.0.1:{OTHER_PORT}" in message

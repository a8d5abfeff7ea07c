"""End to end, as README says: `mapo serve` on a fresh data dir, then a whole job through the SDK.

Prints the wall time of the test and of the job (submit → succeeded); the team tracks both figures.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.sdk import JSON, MapoClient
from tests.support.specs import FAST_TRAINING
from trainer.families import FAMILIES
from trainer.synthetic.demo_data import write_demo_upload

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240  # first start builds the four tiny models
JOB_TIMEOUT_S = 300
KEY_LINE = re.compile(r"MAPO_API_KEY=(mapo_\S+)")
READY_LINE = re.compile(r"ready at (http://\S+)")
CHILD_LINE = re.compile(r"started the (?:api|worker) \(pid (\d+)\)")

# The embedded service's one worker serves every configured queue, so a job routed to the second runs too.
QUEUES = "mapo.gpu,mapo.gpu.large"
JOB_SPEC: dict[str, Any] = {
    "base_model": "tiny-sdxl",
    "queue": "mapo.gpu.large",
    "method": "mapo",
    "hyperparameters": FAST_TRAINING,
    "validation": {"prompts": ["a large circle at the centre, flat illustration"], "num_inference_steps": 2},
}


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    data_dir: Path
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return self.stdout.read_text(errors="replace")

    def logs(self) -> str:
        stderr = self.stderr.read_text(errors="replace")[-6000:]
        return f"--- stdout\n{self.output()}\n--- stderr (tail)\n{stderr}"

    def child_pids(self) -> list[int]:
        return [int(pid) for pid in CHILD_LINE.findall(self.output())]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def processes_in_sessions(session_ids: set[int]) -> list[str]:
    """`pid command` of every live process whose session is one of `session_ids` (the children run in
    sessions of their own, so this finds them and anything they started)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[3]) in session_ids:
            found.append(f"{stat.parent.name} {text.split(' ', 2)[1]}")
    return found


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    """`python -m client serve` on a free port with its data under tmp_path; killed if a test leaves it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAPO_")}
    env["MAPO_DATA_DIR"] = str(tmp_path / "mapo-data")
    env["MAPO_QUEUES"] = QUEUES
    stdout, stderr = tmp_path / "serve.out", tmp_path / "serve.err"
    command = [sys.executable, "-m", "client", "serve", "--port", str(free_port())]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=err)
    service = Service(process, tmp_path / "mapo-data", stdout, stderr)
    yield service
    if process.poll() is None:
        process.kill()
        process.wait()
    for pid in service.child_pids():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def wait_until_ready(service: Service) -> tuple[str, str]:
    """The URL and the first API key that the service prints."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while (ready := READY_LINE.search(service.output())) is None:
        assert service.process.poll() is None, f"serve exited early\n{service.logs()}"
        assert time.monotonic() < deadline, f"not ready within {START_TIMEOUT_S}s\n{service.logs()}"
        time.sleep(0.2)
    key = KEY_LINE.search(service.output())
    assert key is not None, service.logs()
    assert httpx.get(f"{ready.group(1)}/readyz").status_code == 200
    return ready.group(1), key.group(1)


def render(pipeline: Any, **options: Any) -> Any:
    import numpy as np
    import torch

    generator = torch.Generator().manual_seed(0)
    images = pipeline(
        "a large circle at the centre",
        num_inference_steps=2,
        height=32,
        width=32,
        generator=generator,
        output_type="np",
        **options,
    ).images
    return np.asarray(images)


def assert_adapter_changes_the_pipeline(model_dir: Path, adapter_dir: Path) -> None:
    import numpy as np
    from diffusers import StableDiffusionXLPipeline

    pipeline = StableDiffusionXLPipeline.from_pretrained(str(model_dir))
    before = render(pipeline)
    pipeline.load_lora_weights(str(adapter_dir))
    after = render(pipeline)
    assert np.abs(after - before).max() > 1e-4


def assert_flux_adapters_load_alike(model_dir: Path, diffusers_file: Path, comfyui_file: Path) -> None:
    """Both formats of a FLUX adapter load with FluxPipeline.load_lora_weights and draw the same images,
    which differ from the base model's."""
    import numpy as np
    from diffusers import FluxPipeline

    drawn = []
    for adapter in (None, diffusers_file, comfyui_file):
        pipeline = FluxPipeline.from_pretrained(str(model_dir))
        if adapter is not None:
            pipeline.load_lora_weights(str(adapter.parent), weight_name=adapter.name)
        drawn.append(render(pipeline))
    base, from_diffusers, from_comfyui = drawn
    assert np.abs(from_diffusers - base).max() > 1e-4
    np.testing.assert_allclose(from_comfyui, from_diffusers, atol=1e-5)


def run_job(mapo: MapoClient, dataset_id: str, **overrides: Any) -> tuple[JSON, list[JSON], float]:
    """Submit the job, follow its events to the end; returns the job, its events, and submit → end secs."""
    events: list[JSON] = []
    submitted = time.monotonic()
    job = mapo.create_job(dataset_id=dataset_id, **(JOB_SPEC | overrides))
    finished = mapo.wait(job["id"], timeout=JOB_TIMEOUT_S, on_event=events.append)
    return finished, events, time.monotonic() - submitted


@pytest.mark.slow
def test_embedded_service_trains_a_tiny_sdxl_and_a_tiny_flux_job_end_to_end(
    service: Service, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    url, key = wait_until_ready(service)
    ready_s = time.monotonic() - started
    upload = write_demo_upload(tmp_path / "demo.zip", kind="zip", num_pairs=12, resolution=64)

    with MapoClient(url, key) as mapo:
        dataset = mapo.upload_dataset(upload, name="demo")
        assert (dataset["status"], dataset["num_pairs"]) == ("ready", 12)
        job, events, job_s = run_job(mapo, dataset["id"])
        assert job["status"] == "succeeded", f"{job}\n{service.logs()}"
        assert job["queue"] == "mapo.gpu.large"
        assert [e["id"] for e in events] == list(range(1, len(events) + 1))
        types = [e["type"] for e in events]
        assert types[:2] == ["queued", "running"] and types[-1] == "succeeded"
        assert types.count("step") == 4 and {"checkpoint", "sample", "artifact"} <= set(types)
        assert job["progress"]["step"] == job["progress"]["total_steps"] == 4
        assert mapo.metrics(job["id"])["loss"]["steps"] == [1, 2, 3, 4]
        assert {s["with_lora"] for s in mapo.samples(job["id"])} == {False, True}
        (tmp_path / "adapter").mkdir()
        adapter = mapo.download_adapter(job["id"], tmp_path / "adapter")

    reported = httpx.get(f"{url}/v1/jobs/{job['id']}/adapter", headers={"Authorization": f"Bearer {key}"})
    assert hashlib.sha256(adapter.read_bytes()).hexdigest() == reported.headers["x-checksum-sha256"]
    assert adapter.name == "pytorch_lora_weights.safetensors"
    loading = time.monotonic()
    assert_adapter_changes_the_pipeline(service.data_dir / "models" / "tiny-sdxl", adapter.parent)
    load_s = time.monotonic() - loading
    flux_s = run_flux_job(url, key, dataset["id"], service.data_dir / "models" / "tiny-flux", tmp_path)

    children = set(service.child_pids())
    stopping = time.monotonic()
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(timeout=60) == 0, service.logs()
    stop_s = time.monotonic() - stopping
    assert processes_in_sessions(children) == []

    with capsys.disabled():
        print(
            f"\n[e2e] wall {time.monotonic() - started:.1f}s: first start to ready {ready_s:.1f}s, "
            f"job submit → succeeded {job_s:.1f}s ({len(events)} events), "
            f"load_lora_weights check {load_s:.1f}s, a tiny-flux job and both its adapters {flux_s:.1f}s, "
            f"SIGTERM → exit {stop_s:.1f}s"
        )


def run_flux_job(url: str, key: str, dataset_id: str, model_dir: Path, tmp_path: Path) -> float:
    """A MaPO job on the flow-matching tiny-flux through the same service; both adapters checked."""
    started = time.monotonic()
    with MapoClient(url, key) as mapo:
        offered = {m["name"]: m for m in mapo.list_base_models()}
        assert {name: offered[f"tiny-{name}"]["family"] for name in FAMILIES} == {n: n for n in FAMILIES}
        job, events, _ = run_job(mapo, dataset_id, base_model="tiny-flux")
        assert job["status"] == "succeeded", job
        assert "training flux" in next(e["message"] for e in events if e["type"] == "started")
        folder = tmp_path / "flux"
        folder.mkdir()
        diffusers_file = mapo.download_adapter(job["id"], folder)
        comfyui_file = mapo.download_adapter(job["id"], folder, format="kohya")
    assert_flux_adapters_load_alike(model_dir, diffusers_file, comfyui_file)
    return time.monotonic() - started
